"""Wide & Deep: a deep MLP plus a wide linear model over the same features, summed as logits.

Levels: embedding = `[emb(sparse) .. | dense | wide]` where `wide` (1 carried column) is
the wide part's logit (one weight per category + linear dense term); block i = hidden
layer i on the main columns, the wide column passed through unchanged; tower =
`Linear(hidden[-1], 1)(main) + wide`.
"""

from __future__ import annotations

import torch

from emm_ray.data.schema import FeatureSchema
from emm_ray.models.base import DecomposableModel, FieldEmbedding, ModelEmbedding
from emm_ray.models.layers import DeepHyperparameters, FirstOrder, SumTower, deep_blocks


class WideDeepHyperparameters(DeepHyperparameters):
    """Wide & Deep: the shared deep hyperparameters; the wide part has none."""


class WideDeepEmbedding(ModelEmbedding):
    """`[B, S * E + D + 1]`: the deep input followed by the wide logit."""

    def __init__(self, cardinalities: list[int], num_dense: int, dim: int) -> None:
        super().__init__(len(cardinalities) * dim + num_dense + 1, out_carry=1)
        self.fields = FieldEmbedding(cardinalities, dim)
        self.wide = FirstOrder(cardinalities, num_dense)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        deep = self.fields(sparse).flatten(1)
        return torch.cat([deep, dense, self.wide(sparse, dense)], dim=1)


class WideDeep(DecomposableModel):
    """Embedding (deep input + wide logit) -> len(hidden) deep blocks -> sum tower."""

    architecture = "wide_deep"
    Hyperparameters = WideDeepHyperparameters

    def build(self, schema: FeatureSchema, config: WideDeepHyperparameters):
        embedding = WideDeepEmbedding(schema.cardinalities, len(schema.dense), config.embed_dim)
        blocks = deep_blocks(embedding.out_main, config, carry=1)
        return embedding, blocks, SumTower(config.hidden[-1], 1)
