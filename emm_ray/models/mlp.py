"""MLP (DNN): concatenated field embeddings and dense values through a stack of layers.

Levels: embedding = `[emb(sparse_1) .. emb(sparse_S) | dense]` (no carry);
block i = hidden layer i (`Linear -> ReLU`); tower = `Linear(hidden[-1], 1)`.
The reference EMM pool is made only of these.
"""

from __future__ import annotations

from emm_ray.data.schema import FeatureSchema
from emm_ray.models.base import DecomposableModel
from emm_ray.models.layers import ConcatEmbedding, DeepHyperparameters, LinearTower, deep_blocks


class MLPHyperparameters(DeepHyperparameters):
    """MLP: only the shared deep hyperparameters."""


class MLP(DecomposableModel):
    """Embedding -> len(hidden) deep blocks -> linear tower."""

    architecture = "mlp"
    Hyperparameters = MLPHyperparameters

    def build(self, schema: FeatureSchema, config: MLPHyperparameters):
        embedding = ConcatEmbedding(schema.cardinalities, len(schema.dense), config.embed_dim)
        blocks = deep_blocks(embedding.out_width, config)
        return embedding, blocks, LinearTower(config.hidden[-1])
