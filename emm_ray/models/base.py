"""The decomposition contract every single-task model honours.

A model is `tower(blocks[-1](...blocks[0](embedding(sparse, dense))))`: an embedding
that turns encoded inputs into a flat state `[B, width]`, an ordered list of blocks
(the components EMM fuses) each mapping `[B, in_width] -> [B, out_width]`, and a tower
mapping the last state to one logit per row. `forward` *is* that composition, so the
components of `decompose()` reproduce the model bit for bit. Parallel branches
(an FM term, a cross network, a wide part) travel inside the flat state as extra
columns; a block that does not touch a branch passes its columns through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from emm_ray.data.schema import FeatureSchema


class Component(nn.Module):
    """A module with declared flat input/output widths."""

    def __init__(self, in_width: int, out_width: int) -> None:
        super().__init__()
        self.in_width = in_width
        self.out_width = out_width


class ModelEmbedding(nn.Module):
    """Encoded `(sparse [B, S] int64, dense [B, D] float32)` -> flat state `[B, out_width]`."""

    def __init__(self, out_width: int) -> None:
        super().__init__()
        self.out_width = out_width


class FieldEmbedding(nn.Module):
    """One table for all sparse fields (offsets per field): `[B, S] -> [B, S, dim]`.

    A single table with offsets is one gather instead of S small lookups, which is what
    keeps CPU training fast.
    """

    def __init__(self, cardinalities: list[int], dim: int) -> None:
        super().__init__()
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(sum(cardinalities), dim)
        nn.init.normal_(self.table.weight, std=0.01)
        self.dim = dim

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self.table(sparse + self.offsets)


@dataclass(frozen=True)
class Decomposition:
    """A model's hierarchy: the pieces EMM aligns level by level."""

    architecture: str
    task: str
    embedding: ModelEmbedding
    blocks: tuple[Component, ...]
    tower: Component


class DecomposableModel(nn.Module):
    """Base of every zoo architecture: subclasses build `embedding`, `blocks`, `tower`."""

    architecture: ClassVar[str]

    def __init__(self, schema: FeatureSchema, task: str, **hparams: Any) -> None:
        super().__init__()
        schema.task_index(task)
        self.task = task
        self.schema_hash = schema.hash
        self.hparams = hparams
        self.embedding: ModelEmbedding
        self.blocks: nn.ModuleList
        self.tower: Component

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
