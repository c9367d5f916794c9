"""xDeepFM: a Compressed Interaction Network (CIN), a deep MLP and a linear term, summed.

Every feature is a field vector (`FieldStack`: sparse embeddings, dense value * vector),
`X0 = [B, F, E]`. CIN layer k: `X_k[o, e] = sum_{h, f} W_k[o, h, f] X_{k-1}[h, e] X0[f, e]`
(no activation: `X_k` is a degree-(k+1) interaction of field vectors); each layer's maps
are sum-pooled over `e` into the CIN output `p`. One CIN layer is paired with each deep
layer, so both branches advance together.
Levels: embedding = `[X0 flat (F * E) | first_order (1)]` (1 carried column);
block 1 = `-> [h_1 | X_1 | X0 | p_1 | first_order]`; block i =
`[h_{i-1} | X_{i-1} | X0 | p | first_order] -> [h_i | X_i | X0 | p, pool(X_i) | first_order]`;
the last block drops `X_L` and `X0`: `-> [h_L | p | first_order]`; tower =
`Linear(hidden[-1] + sum(cin) + 1, 1)` over that state (the paper's output unit, with
the first-order term as one more input).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field, model_validator
from torch import nn

from emm_ray.data.schema import FeatureSchema
from emm_ray.models.base import Component, DecomposableModel, ModelEmbedding
from emm_ray.models.layers import (
    DeepHyperparameters,
    FieldStack,
    FirstOrder,
    LinearTower,
    PositiveInt,
    deep_layer,
)


class XDeepFMHyperparameters(DeepHyperparameters):
    """xDeepFM: deep hyperparameters plus CIN layer sizes, one per deep layer."""

    cin: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (16, 16, 16)

    @model_validator(mode="after")
    def _one_cin_layer_per_deep_layer(self) -> XDeepFMHyperparameters:
        if len(self.cin) != len(self.hidden):
            raise ValueError(
                f"cin {self.cin} needs one layer per hidden layer {self.hidden}: "
                "blocks pair CIN layer i with deep layer i"
            )
        return self


class XDeepFMEmbedding(ModelEmbedding):
    """`[B, F * E + 1]`: field vectors (deep input and CIN's `X0`) and the first-order logit."""

    def __init__(self, cardinalities: list[int], num_dense: int, dim: int) -> None:
        super().__init__((len(cardinalities) + num_dense) * dim + 1, out_carry=1)
        self.fields = FieldStack(cardinalities, num_dense, dim)
        self.first_order = FirstOrder(cardinalities, num_dense)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        fields = self.fields(sparse, dense).flatten(1)
        return torch.cat([fields, self.first_order(sparse, dense)], dim=1)


class CINLayer(nn.Module):
    """`X_k[b, e, o] = sum_{h, f} W[o, h, f] X_{k-1}[b, e, h] X0[b, e, f] + bias[o]`.

    An `einsum` that never materialises the `[B, E, H, F]` outer product and contracts
    the larger of `H`, `F` first, so its intermediate (`[B, E, O, min(H, F)]`) is the
    smaller one: several times faster on CPU than Conv1d over the outer product.
    """

    def __init__(self, in_maps: int, fields: int, out_maps: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_maps, in_maps, fields))
        self.bias = nn.Parameter(torch.zeros(out_maps))
        bound = 1.0 / math.sqrt(in_maps * fields)
        nn.init.uniform_(self.weight, -bound, bound)
        self.fields_first = fields > in_maps

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        if self.fields_first:
            return torch.einsum("ohf,bef,beh->beo", self.weight, x0, x) + self.bias
        return torch.einsum("ohf,beh,bef->beo", self.weight, x, x0) + self.bias


class CINDeepBlock(Component):
    """Deep layer i and CIN layer i side by side.

    `X_k` travels embedding-dim-major (`[B, E, H_k]` flattened), the layout `CINLayer`
    contracts in.
    """

    def __init__(
        self,
        fields: int,
        dim: int,
        in_main: int,
        out_main: int,
        cin_in: int,
        cin_out: int,
        pooled_in: int,
        first: bool,
        last: bool,
        config: XDeepFMHyperparameters,
    ) -> None:
        x0_width = fields * dim
        in_carry = 1 if first else cin_in * dim + x0_width + pooled_in + 1
        pooled_out = pooled_in + cin_out
        out_carry = pooled_out + 1 if last else cin_out * dim + x0_width + pooled_out + 1
        super().__init__(in_main + in_carry, out_main + out_carry, in_carry, out_carry)
        self.fields = fields
        self.dim = dim
        self.cin_in = cin_in
        self.pooled_in = pooled_in
        self.first = first
        self.last = last
        self.deep = deep_layer(in_main, out_main, config.dropout, config.layer_norm)
        self.cin = CINLayer(cin_in, fields, cin_out)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        x0_width = self.fields * self.dim
        if self.first:
            h, first_order = state.split([self.in_main, 1], dim=1)
            x0 = h
            x = h.view(-1, self.fields, self.dim).transpose(1, 2)
            pooled = []
        else:
            h, x, x0, pooled_in, first_order = state.split(
                [self.in_main, self.cin_in * self.dim, x0_width, self.pooled_in, 1], dim=1
            )
            x = x.view(-1, self.dim, self.cin_in)
            pooled = [pooled_in]
        x_next = self.cin(x, x0.view(-1, self.fields, self.dim).transpose(1, 2))
        parts = [self.deep(h)]
        if not self.last:
            parts += [x_next.flatten(1), x0]
        parts += [*pooled, x_next.sum(dim=1), first_order]
        return torch.cat(parts, dim=1)


class XDeepFM(DecomposableModel):
    """Embedding (fields + linear) -> len(hidden) CIN+deep blocks -> linear tower."""

    architecture = "xdeepfm"
    Hyperparameters = XDeepFMHyperparameters

    def build(self, schema: FeatureSchema, config: XDeepFMHyperparameters):
        fields, dim = schema.num_features, config.embed_dim
        embedding = XDeepFMEmbedding(schema.cardinalities, len(schema.dense), dim)
        widths = [fields * dim, *config.hidden]
        cin = [fields, *config.cin]
        depth = len(config.hidden)
        blocks = [
            CINDeepBlock(
                fields,
                dim,
                widths[i],
                widths[i + 1],
                cin[i],
                cin[i + 1],
                pooled_in=sum(config.cin[:i]),
                first=i == 0,
                last=i == depth - 1,
                config=config,
            )
            for i in range(depth)
        ]
        pooled = sum(config.cin)
        return embedding, blocks, LinearTower(config.hidden[-1] + pooled + 1, in_carry=pooled + 1)
