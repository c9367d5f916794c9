"""Single-task model zoo and the decomposition contract EMM fuses (see docs/models.md)."""

from emm_ray.models.base import (
    Component,
    DecomposableModel,
    Decomposition,
    FieldEmbedding,
    ModelEmbedding,
)
from emm_ray.models.registry import ARCHITECTURES, build_model, model_class, parse_hyperparameters

__all__ = [
    "ARCHITECTURES",
    "Component",
    "DecomposableModel",
    "Decomposition",
    "FieldEmbedding",
    "ModelEmbedding",
    "build_model",
    "model_class",
    "parse_hyperparameters",
]
