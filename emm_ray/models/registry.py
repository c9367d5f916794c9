"""The zoo's registry: architecture name -> model class. Adding one is a module plus a line."""

from __future__ import annotations

from typing import Any

from emm_ray.config import StrictModel
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError
from emm_ray.models.autoint import AutoInt
from emm_ray.models.base import DecomposableModel
from emm_ray.models.dcn_v2 import DCNv2
from emm_ray.models.deepfm import DeepFM
from emm_ray.models.mlp import MLP
from emm_ray.models.wide_deep import WideDeep
from emm_ray.models.xdeepfm import XDeepFM

ARCHITECTURES: dict[str, type[DecomposableModel]] = {
    model.architecture: model
    for model in (
        MLP,
        WideDeep,
        DeepFM,
        DCNv2,
        AutoInt,
        XDeepFM,
    )
}


def model_class(architecture: str) -> type[DecomposableModel]:
    """The class registered as `architecture`; a `ConfigError` lists the valid names."""
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {architecture!r}; valid architectures: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        ) from None


def parse_hyperparameters(architecture: str, hparams: dict[str, Any]) -> StrictModel:
    """Validate a pool member's hyperparameters before any training starts."""
    return model_class(architecture).parse_hyperparameters(hparams)


def build_model(
    architecture: str, schema: FeatureSchema, task: str, **hparams: Any
) -> DecomposableModel:
    """A fresh single-task model of `architecture` for `task` of `schema`.

    Unknown architecture or hyperparameter, an ill-typed value: `ConfigError`;
    unknown task: `SchemaMismatchError` listing the schema's tasks.
    """
    return model_class(architecture)(schema, task, **hparams)
