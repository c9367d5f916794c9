"""DCN-v2 (parallel form): a cross network and a deep MLP side by side on the same input.

Cross layer: `x_{l+1} = x0 * (W x_l + b) + x_l`, with `W` full rank or low rank `U V^T`.
One cross layer is paired with each deep layer, so both branches advance together.
Levels, with `x0 = [emb(sparse) .. | dense]` of width `D0`:
embedding = `x0` (no carry); block 1 = `x0 -> [h_1 | x_1 | x0]`; block i =
`[h_{i-1} | x_{i-1} | x0] -> [h_i | x_i | x0]` (deep layer i on `h`, cross layer i on `x`,
`x0` carried for later cross layers); the last block drops `x0`: `-> [h_L | x_L]`;
tower = `Linear(hidden[-1] + D0, 1)` over `[h_L | x_L]` (the paper's concatenation).
Carry: `2 * D0` columns between blocks, `D0` (the cross state) into the tower.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from emm_ray.data.schema import FeatureSchema
from emm_ray.models.base import Component, DecomposableModel
from emm_ray.models.layers import (
    ConcatEmbedding,
    DeepHyperparameters,
    LinearTower,
    deep_layer,
)


class DCNv2Hyperparameters(DeepHyperparameters):
    """DCN-v2: deep hyperparameters plus the cross weights' rank (None = full rank)."""

    cross_rank: Annotated[int, Field(ge=1)] | None = 64


class CrossLayer(nn.Module):
    """`x0 * (W x + b) + x`: explicit feature crosses of one more degree per layer."""

    def __init__(self, width: int, rank: int | None) -> None:
        super().__init__()
        if rank is None or rank >= width:
            self.weight: nn.Module = nn.Linear(width, width)
        else:
            self.weight = nn.Sequential(nn.Linear(width, rank, bias=False), nn.Linear(rank, width))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.weight(x) + x


class CrossDeepBlock(Component):
    """Deep layer i and cross layer i side by side; `x0` carried until the last block."""

    def __init__(
        self,
        x0_width: int,
        in_main: int,
        out_main: int,
        first: bool,
        last: bool,
        config: DCNv2Hyperparameters,
    ) -> None:
        in_carry = 0 if first else 2 * x0_width
        out_carry = x0_width if last else 2 * x0_width
        super().__init__(in_main + in_carry, out_main + out_carry, in_carry, out_carry)
        self.x0_width = x0_width
        self.first = first
        self.last = last
        self.deep = deep_layer(in_main, out_main, config.dropout, config.layer_norm)
        self.cross = CrossLayer(x0_width, config.cross_rank)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if self.first:
            h = x = x0 = state
        else:
            h, x, x0 = state.split([self.in_main, self.x0_width, self.x0_width], dim=1)
        parts = [self.deep(h), self.cross(x0, x)]
        if not self.last:
            parts.append(x0)
        return torch.cat(parts, dim=1)


class DCNv2(DecomposableModel):
    """Embedding -> len(hidden) cross+deep blocks -> linear tower over both branches."""

    architecture = "dcn_v2"
    Hyperparameters = DCNv2Hyperparameters

    def build(self, schema: FeatureSchema, config: DCNv2Hyperparameters):
        embedding = ConcatEmbedding(schema.cardinalities, len(schema.dense), config.embed_dim)
        x0 = embedding.out_width
        widths = [x0, *config.hidden]
        depth = len(config.hidden)
        blocks = [
            CrossDeepBlock(x0, widths[i], widths[i + 1], i == 0, i == depth - 1, config)
            for i in range(depth)
        ]
        return embedding, blocks, LinearTower(config.hidden[-1] + x0, in_carry=x0)
