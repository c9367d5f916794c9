"""AutoInt: stacked multi-head self-attention over field vectors learns feature interactions.

Every feature is a field vector (`FieldStack`: sparse embeddings, dense value * vector).
Levels: embedding = the `[B, F, E]` field vectors flattened to `[B, F * E]` (no carry);
block i = one interacting layer, which views its input as `[B, F, d_in]`, attends over
fields (scaled dot-product, `heads` heads), adds a linear residual, applies ReLU and
flattens to `[B, F * attention_dim]`; tower = `Linear(F * attention_dim, 1)`.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional

from emm_ray.data.schema import FeatureSchema
from emm_ray.models.base import (
    Component,
    DecomposableModel,
    ModelEmbedding,
    ModelHyperparameters,
)
from emm_ray.models.layers import FieldStack, LinearTower, PositiveInt


class AutoIntHyperparameters(ModelHyperparameters):
    """AutoInt: field embedding size, number of interacting layers, attention shape."""

    embed_dim: PositiveInt = 16
    attention_layers: PositiveInt = 3
    heads: PositiveInt = 2
    attention_dim: PositiveInt = 16
    layer_norm: bool = False
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _heads_divide_attention_dim(self) -> AutoIntHyperparameters:
        if self.attention_dim % self.heads:
            raise ValueError(
                f"attention_dim {self.attention_dim} must be a multiple of heads {self.heads}"
            )
        return self


class FieldVectors(ModelEmbedding):
    """`[B, F * E]`: the field vectors, flattened field-major."""

    def __init__(self, cardinalities: list[int], num_dense: int, dim: int) -> None:
        super().__init__((len(cardinalities) + num_dense) * dim)
        self.fields = FieldStack(cardinalities, num_dense, dim)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.fields(sparse, dense).flatten(1)


class InteractingLayer(Component):
    """Multi-head self-attention across fields with a linear residual and ReLU."""

    def __init__(self, fields: int, in_dim: int, config: AutoIntHyperparameters) -> None:
        out_dim = config.attention_dim
        super().__init__(fields * in_dim, fields * out_dim)
        self.fields = fields
        self.in_dim = in_dim
        self.heads = config.heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(in_dim, 3 * out_dim, bias=False)
        self.residual = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim) if config.layer_norm else nn.Identity()

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        x = state.view(-1, self.fields, self.in_dim)
        q, k, v = (
            t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, -1)
        )
        p = self.dropout if self.training else 0.0
        attended = functional.scaled_dot_product_attention(q, k, v, dropout_p=p)
        out = attended.transpose(1, 2).flatten(2) + self.residual(x)
        return self.norm(torch.relu(out)).flatten(1)


class AutoInt(DecomposableModel):
    """Embedding (field vectors) -> `attention_layers` interacting layers -> linear tower."""

    architecture = "autoint"
    Hyperparameters = AutoIntHyperparameters

    def build(self, schema: FeatureSchema, config: AutoIntHyperparameters):
        embedding = FieldVectors(schema.cardinalities, len(schema.dense), config.embed_dim)
        fields = schema.num_features
        dims = [config.embed_dim] + [config.attention_dim] * config.attention_layers
        blocks = [InteractingLayer(fields, dims[i], config) for i in range(config.attention_layers)]
        return embedding, blocks, LinearTower(fields * config.attention_dim)
