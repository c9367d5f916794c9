"""What every end-to-end multi-task baseline shares: inputs, MLPs, task bookkeeping.

Baselines read the same `FeatureSchema` as the pool and the fused model and return
logits `[B, T]` (columns in `task_names` order), so they train in the same generic loop
on the same data, split and epoch budget as everything they are compared with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field, ValidationError
from torch import nn

from emm_ray.config import StrictModel
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError
from emm_ray.models.base import FlatInput

PositiveInt = Annotated[int, Field(ge=1)]
Widths = Annotated[tuple[PositiveInt, ...], Field(min_length=1)]


class BaselineHyperparameters(StrictModel):
    """Shared by every baseline: embedding size and dropout of the hidden layers."""

    embed_dim: PositiveInt = 16
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


def mlp(in_width: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    """`Linear -> ReLU [-> Dropout]` per hidden width (no BatchNorm, as in the zoo)."""
    layers: list[nn.Module] = []
    for a, b in zip([in_width, *hidden], hidden, strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Head(nn.Module):
    """A task tower: MLP then one logit per row."""

    def __init__(self, in_width: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.mlp = mlp(in_width, hidden, dropout)
        self.logit = nn.Linear(hidden[-1] if hidden else in_width, 1)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.logit(self.mlp(state)).squeeze(-1)


def labels_are_nested(labels: torch.Tensor) -> bool:
    """Whether 0/1 `labels` `[N, T]` form a funnel: each task's positives lie within the
    previous task's (CTCVR within CTR), the premise of ESMM's and AITM's funnel form."""
    if labels.dim() != 2:
        raise ValueError(f"labels must be [N, T], got shape {tuple(labels.shape)}")
    positive = labels > 0.5
    return not bool((positive[:, 1:] & ~positive[:, :-1]).any())


class MultiTaskBaseline(nn.Module, ABC):
    """Base of the baselines: validated hyperparameters and the tasks they predict.

    `tasks` defaults to all of the schema's tasks, in schema order; `task_indices` are
    their label columns. `hparams` holds every hyperparameter, defaults included, so
    `build_baseline(name, schema, tasks, **model.hparams)` rebuilds the same shape.
    """

    name: ClassVar[str]
    Hyperparameters: ClassVar[type[BaselineHyperparameters]]
    min_tasks: ClassVar[int] = 1
    max_tasks: ClassVar[int | None] = None

    def __init__(
        self, schema: FeatureSchema, tasks: Sequence[str] | None = None, **hparams: Any
    ) -> None:
        super().__init__()
        self.task_names = list(tasks) if tasks is not None else schema.task_names
        self.task_indices = [schema.task_index(t) for t in self.task_names]
        count = len(self.task_names)
        if count < self.min_tasks or (self.max_tasks is not None and count > self.max_tasks):
            wanted = self.min_tasks if self.max_tasks == self.min_tasks else f">= {self.min_tasks}"
            raise ConfigError(f"baseline {self.name!r} needs {wanted} tasks, got {self.task_names}")
        self.schema_hash = schema.hash
        self.config = parse_hyperparameters(self.name, self.Hyperparameters, hparams)
        self.hparams: dict[str, Any] = self.config.model_dump()
        self.input = FlatInput(schema, self.config.embed_dim)
        self.build(self.config)

    @abstractmethod
    def build(self, config: Any) -> None:
        """Create the baseline's layers on top of `self.input` for validated `config`."""


def parse_hyperparameters(
    name: str, kind: type[BaselineHyperparameters], hparams: dict[str, Any]
) -> Any:
    """Validate `hparams`; the error names the baseline, the bad key and the valid keys."""
    try:
        return kind.model_validate(hparams)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: "
            + ("unknown hyperparameter" if err["type"] == "extra_forbidden" else err["msg"])
            + f" (got {err['input']!r})"
            for err in exc.errors()
        )
        raise ConfigError(
            f"baseline {name!r}: {problems}; valid hyperparameters: {', '.join(kind.model_fields)}"
        ) from None
