"""DeepFM: a factorisation machine and a deep MLP sharing one field embedding.

Every feature is a field vector (`FieldStack`: sparse embeddings, dense value * vector).
Levels: embedding = `[fields (F * E) | fm (E) | first_order (1)]`, where `fm` is the
FM's pairwise-interaction vector `0.5 * ((sum_f v_f)^2 - sum_f v_f^2)` (its sum is the
FM second-order term) and `first_order` the linear term, both carried; block i = hidden
layer i on the main columns, carry passed through unchanged; tower =
`Linear(hidden[-1], 1)(main) + sum(fm) + first_order`.
"""

from __future__ import annotations

import torch

from emm_ray.data.schema import FeatureSchema
from emm_ray.models.base import DecomposableModel, ModelEmbedding
from emm_ray.models.layers import (
    DeepHyperparameters,
    FieldStack,
    FirstOrder,
    SumTower,
    deep_blocks,
)


class DeepFMHyperparameters(DeepHyperparameters):
    """DeepFM: the shared deep hyperparameters; the FM part has none."""


class DeepFMEmbedding(ModelEmbedding):
    """`[B, F * E + E + 1]`: field vectors, FM interaction vector, first-order logit."""

    def __init__(self, cardinalities: list[int], num_dense: int, dim: int) -> None:
        fields = len(cardinalities) + num_dense
        super().__init__(fields * dim + dim + 1, out_carry=dim + 1)
        self.fields = FieldStack(cardinalities, num_dense, dim)
        self.first_order = FirstOrder(cardinalities, num_dense)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        fields = self.fields(sparse, dense)
        fm = 0.5 * (fields.sum(dim=1).square() - fields.square().sum(dim=1))
        return torch.cat([fields.flatten(1), fm, self.first_order(sparse, dense)], dim=1)


class DeepFM(DecomposableModel):
    """Embedding (fields + FM + linear) -> len(hidden) deep blocks -> sum tower."""

    architecture = "deepfm"
    Hyperparameters = DeepFMHyperparameters

    def build(self, schema: FeatureSchema, config: DeepFMHyperparameters):
        embedding = DeepFMEmbedding(schema.cardinalities, len(schema.dense), config.embed_dim)
        carry = embedding.out_carry
        blocks = deep_blocks(embedding.out_main, config, carry=carry)
        return embedding, blocks, SumTower(config.hidden[-1], carry)
