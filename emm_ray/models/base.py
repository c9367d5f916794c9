"""The decomposition contract every single-task model honours.

A model is `tower(blocks[-1](...blocks[0](embedding(sparse, dense))))`: an embedding
that turns encoded inputs into a flat state `[B, width]`, an ordered list of blocks
(the components EMM fuses) each mapping `[B, in_width] -> [B, out_width]`, and a tower
mapping the last state to one logit per row. `forward` *is* that composition, so the
components of `decompose()` reproduce the model bit for bit.

Parallel branches (an FM term, a cross network, a wide part) travel inside the flat
state as extra columns. Every state is laid out `[main | carry]`: the leading `main`
columns are the architecture's deep path (what a block's own layers transform), the
trailing `carry` columns hold branch state that the tower (or a later block) needs.
A block that does not touch a branch passes its columns through unchanged. Each
component declares both widths, so a fusion layer knows which columns are which:
`in_width`/`out_width` in total, `in_carry`/`out_carry` of them trailing carry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import ValidationError
from torch import nn

from emm_ray.config import StrictModel
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError, DataError


class Component(nn.Module):
    """A module with declared flat input/output widths and their trailing carry widths."""

    def __init__(
        self, in_width: int, out_width: int, in_carry: int = 0, out_carry: int = 0
    ) -> None:
        super().__init__()
        if not (0 <= in_carry <= in_width and 0 <= out_carry <= out_width):
            raise ValueError(
                f"carry widths ({in_carry}, {out_carry}) must lie within the state widths "
                f"({in_width}, {out_width})"
            )
        self.in_width = in_width
        self.out_width = out_width
        self.in_carry = in_carry
        self.out_carry = out_carry

    @property
    def in_main(self) -> int:
        """Leading input columns that belong to the main (deep) path."""
        return self.in_width - self.in_carry

    @property
    def out_main(self) -> int:
        """Leading output columns that belong to the main (deep) path."""
        return self.out_width - self.out_carry


class ModelEmbedding(nn.Module):
    """Encoded `(sparse [B, S] int64, dense [B, D] float32)` -> flat state `[B, out_width]`.

    The last `out_carry` columns are branch state (e.g. a first-order logit).
    """

    def __init__(self, out_width: int, out_carry: int = 0) -> None:
        super().__init__()
        if not 0 <= out_carry <= out_width:
            raise ValueError(f"carry width {out_carry} must lie within the state width {out_width}")
        self.out_width = out_width
        self.out_carry = out_carry

    @property
    def out_main(self) -> int:
        return self.out_width - self.out_carry


class _Gather(torch.autograd.Function):
    """`weight[index]` whose backward is one `index_add_` (a few times faster on CPU than
    `nn.Embedding`'s sort-based dense backward, which dominated small-model training).

    On CPU, narrow tables (dim <= `COLUMNWISE_BACKWARD_MAX_DIM`) add column by column:
    with several threads a 2-D `index_add_` takes a parallel radix-sort path that costs
    ~2x plain serial adds when each row carries only a few floats (measured: 65k rows of
    dim 4, 1.6 ms vs 0.8 ms on 2 cores; from dim 16 up the 2-D path wins). CUDA's 2-D
    `index_add_` is one atomic kernel either way.
    """

    COLUMNWISE_BACKWARD_MAX_DIM = 4

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = weight.shape[0]
        return weight.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        weight_grad = grad.new_zeros(ctx.rows, grad.shape[1])
        if grad.device.type != "cpu" or grad.shape[1] > _Gather.COLUMNWISE_BACKWARD_MAX_DIM:
            return weight_grad.index_add_(0, index, grad), None
        for column in range(grad.shape[1]):
            weight_grad[:, column].index_add_(0, index, grad[:, column])
        return weight_grad, None


class FieldEmbedding(nn.Module):
    """One table for all sparse fields (offsets per field): `[B, S] -> [B, S, dim]`.

    A single table with offsets is one gather instead of S small lookups, which is what
    keeps CPU training fast. Row 0 of each field is its out-of-vocabulary bucket.
    """

    def __init__(self, cardinalities: Sequence[int], dim: int) -> None:
        super().__init__()
        cards = torch.tensor(list(cardinalities), dtype=torch.long)
        self.register_buffer("offsets", cards.cumsum(0) - cards, persistent=False)
        self.weight = nn.Parameter(torch.empty(int(cards.sum()), dim))
        nn.init.normal_(self.weight, std=0.01)
        self.dim = dim

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        rows = (sparse + self.offsets).reshape(-1)
        return _Gather.apply(self.weight, rows).view(*sparse.shape, self.dim)


class FlatInput(nn.Module):
    """`(sparse, dense) -> [B, S * dim + D]`: all field embeddings and dense values, flat.

    The input of the end-to-end baselines and of the fusion's fresh embedding.
    """

    def __init__(self, schema: FeatureSchema, dim: int) -> None:
        super().__init__()
        self.fields = FieldEmbedding(schema.cardinalities, dim)
        self.out_width = len(schema.sparse) * dim + len(schema.dense)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.fields(sparse).flatten(1), dense], dim=1)


class ModelHyperparameters(StrictModel):
    """What every architecture takes: `ignore_fields`, input fields the model must not
    use (a team whose model never had them; pools whose members saw different fields)."""

    ignore_fields: tuple[str, ...] = ()


def resolved_hyperparameters(config: StrictModel, mode: str = "json") -> dict[str, Any]:
    """Every hyperparameter, defaults included; `ignore_fields` only when set, so the
    hyperparameters (and digests) of models without it are what they were before it."""
    values = config.model_dump(mode=mode)
    if not values.get("ignore_fields"):
        values.pop("ignore_fields", None)
    return values


def ignore_fields(
    embedding: ModelEmbedding, schema: FeatureSchema, names: Sequence[str], architecture: str
) -> None:
    """Make `embedding` blind to the named fields: sparse ones read as the OOV bucket,
    dense ones as 0, so the model cannot use them (a team whose model never had them).

    A pre-hook on the embedding rather than a wrapper: the state-dict names stay the
    architecture's own, and every user of the embedding (the model, its decomposition,
    a fused model over the pool's embeddings) sees the same blind inputs. A fused model
    with `embedding: fresh` learns its own input over every field.
    """
    known = {*schema.sparse_names, *schema.dense_names}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(
            f"architecture {architecture!r}: ignore_fields names unknown fields {unknown}; "
            f"fields: {sorted(known)}"
        )
    keep_sparse = torch.tensor([n not in names for n in schema.sparse_names], dtype=torch.long)
    keep_dense = torch.tensor([n not in names for n in schema.dense_names], dtype=torch.float32)
    embedding.register_buffer("keep_sparse", keep_sparse, persistent=False)
    embedding.register_buffer("keep_dense", keep_dense, persistent=False)
    embedding.register_forward_pre_hook(_blind_inputs)


def _blind_inputs(
    embedding: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    sparse, dense = inputs
    return sparse * embedding.keep_sparse, dense * embedding.keep_dense


@dataclass(frozen=True)
class Decomposition:
    """A model's hierarchy: the pieces EMM aligns level by level (shared, not copied)."""

    architecture: str
    task: str
    embedding: ModelEmbedding
    blocks: tuple[Component, ...]
    tower: Component


class DecomposableModel(nn.Module, ABC):
    """Base of every zoo architecture.

    A subclass sets `architecture`, `Hyperparameters` (a `StrictModel` whose defaults
    train well on census) and implements `build`, returning its embedding, blocks and
    tower; the base validates the hyperparameters and checks that declared widths chain.
    `hparams` holds every hyperparameter, defaults included, so
    `build_model(architecture, schema, task, **model.hparams)` rebuilds the same shape.
    `Hyperparameters` derive from `ModelHyperparameters` (`ignore_fields`).
    """

    architecture: ClassVar[str]
    Hyperparameters: ClassVar[type[ModelHyperparameters]]

    def __init__(self, schema: FeatureSchema, task: str, **hparams: Any) -> None:
        super().__init__()
        schema.task_index(task)
        self.task = task
        self.schema_hash = schema.hash
        self.num_sparse = len(schema.sparse)
        self.num_dense = len(schema.dense)
        self.sparse_names = schema.sparse_names
        self.dense_names = schema.dense_names
        cardinalities = torch.tensor(schema.cardinalities, dtype=torch.long)
        self.register_buffer("cardinalities", cardinalities, persistent=False)
        self.config = self.parse_hyperparameters(hparams)
        self.hparams: dict[str, Any] = resolved_hyperparameters(self.config, mode="python")
        embedding, blocks, tower = self.build(schema, self.config)
        if self.config.ignore_fields:
            ignore_fields(embedding, schema, self.config.ignore_fields, self.architecture)
        self.embedding = embedding
        self.blocks = nn.ModuleList(blocks)
        self.tower = tower
        self._check_widths()

    @classmethod
    def parse_hyperparameters(cls, hparams: dict[str, Any]) -> StrictModel:
        """Validate `hparams` against `Hyperparameters`; errors name the valid choices."""
        try:
            return cls.Hyperparameters.model_validate(hparams)
        except ValidationError as exc:
            valid = ", ".join(cls.Hyperparameters.model_fields)
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: "
                + ("unknown hyperparameter" if err["type"] == "extra_forbidden" else err["msg"])
                + f" (got {err['input']!r})"
                for err in exc.errors()
            )
            raise ConfigError(
                f"architecture {cls.architecture!r}: {problems}; valid hyperparameters: {valid}"
            ) from None

    @abstractmethod
    def build(
        self, schema: FeatureSchema, config: Any
    ) -> tuple[ModelEmbedding, Sequence[Component], Component]:
        """Create `(embedding, blocks, tower)` for `schema` and validated `config`."""

    def _check_widths(self) -> None:
        """Each part's declared input layout must be the previous part's output layout."""
        if not self.blocks:
            raise ValueError(f"architecture {self.architecture!r} built no blocks")
        parts = [*(f"block {i}" for i in range(len(self.blocks))), "tower"]
        layout, source = (self.embedding.out_width, self.embedding.out_carry), "embedding"
        for name, part in zip(parts, [*self.blocks, self.tower], strict=True):
            if (part.in_width, part.in_carry) != layout:
                raise ValueError(
                    f"{self.architecture}: {name} expects (width, carry) "
                    f"{(part.in_width, part.in_carry)} but {source} gives {layout}"
                )
            layout, source = (part.out_width, part.out_carry), name
        if self.tower.out_width != 1:
            raise ValueError(f"{self.architecture}: the tower must give one logit per row")

    def check_inputs(self, sparse: torch.Tensor, dense: torch.Tensor) -> None:
        """Raise `DataError` naming the field and value if inputs don't fit this model.

        Not called by `forward` (it would cost a device sync per batch on CUDA); call it
        once on data from outside the pipeline (serving requests, foreign files).
        """
        if sparse.dim() != 2 or sparse.shape[1] != self.num_sparse or sparse.dtype != torch.long:
            raise DataError(
                f"sparse input must be int64 [B, {self.num_sparse}], got "
                f"{sparse.dtype} {list(sparse.shape)}"
            )
        if (
            dense.dim() != 2
            or not dense.is_floating_point()
            or dense.shape[1] != self.num_dense
            or dense.shape[0] != sparse.shape[0]
        ):
            raise DataError(
                f"dense input must be float [{sparse.shape[0]}, {self.num_dense}], "
                f"got {dense.dtype} {list(dense.shape)}"
            )
        bad = (sparse < 0) | (sparse >= self.cardinalities)
        if bool(bad.any()):
            row, column = (int(i) for i in bad.nonzero()[0])
            limit = int(self.cardinalities[column])
            raise DataError(
                f"index {int(sparse[row, column])} outside [0, {limit}) "
                "(0 is the out-of-vocabulary bucket)",
                row=row + 1,
                column=self.sparse_names[column],
            )
        if not bool(torch.isfinite(dense).all()):
            row, column = (int(i) for i in (~torch.isfinite(dense)).nonzero()[0])
            raise DataError(
                f"non-finite dense value {float(dense[row, column])}",
                row=row + 1,
                column=self.dense_names[column],
            )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Logit per row, `[B]`."""
        state = self.embedding(sparse, dense)
        for block in self.blocks:
            state = block(state)
        return self.tower(state)

    def decompose(self) -> Decomposition:
        return Decomposition(
            architecture=self.architecture,
            task=self.task,
            embedding=self.embedding,
            blocks=tuple(self.blocks),
            tower=self.tower,
        )
