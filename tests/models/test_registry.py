"""Registry and hyperparameter validation: bad names and values fail with the valid choices."""

from __future__ import annotations

import pytest
from torch import nn

from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError, SchemaMismatchError
from emm_ray.models import ARCHITECTURES, build_model, parse_hyperparameters
from emm_ray.models.base import resolved_hyperparameters

ZOO = ("mlp", "wide_deep", "deepfm", "dcn_v2", "autoint", "xdeepfm")


def test_the_zoo_registers_every_architecture_under_its_own_name() -> None:
    assert set(ZOO) <= set(ARCHITECTURES)
    for name, model in ARCHITECTURES.items():
        assert model.architecture == name


def test_unknown_architecture_lists_the_valid_ones(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'resnet'") as error:
        build_model("resnet", tiny_schema, "click")
    assert all(name in str(error.value) for name in ZOO)


def test_unknown_task_lists_the_schemas_tasks(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(SchemaMismatchError, match=r"unknown task 'sell'.*\['click', 'buy'\]"):
        build_model("mlp", tiny_schema, "sell")


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_unknown_hyperparameter_lists_the_valid_ones(
    architecture: str, tiny_schema: FeatureSchema
) -> None:
    with pytest.raises(ConfigError, match="embed_dimm: unknown hyperparameter") as error:
        build_model(architecture, tiny_schema, "click", embed_dimm=8)
    assert f"architecture {architecture!r}" in str(error.value)
    assert "valid hyperparameters: ignore_fields, embed_dim" in str(error.value)


@pytest.mark.parametrize(
    ("architecture", "hparams", "message"),
    [
        ("mlp", {"embed_dim": "big"}, "embed_dim: Input should be a valid integer"),
        ("mlp", {"hidden": []}, "hidden: .*at least 1 item"),
        ("wide_deep", {"dropout": 1.0}, "dropout: Input should be less than 1"),
        ("deepfm", {"hidden": [64, -1]}, r"hidden\.1: Input should be greater than or equal to 1"),
        ("dcn_v2", {"cross_rank": 0}, "cross_rank"),
        ("autoint", {"heads": 3, "attention_dim": 32}, "multiple of heads 3"),
        ("xdeepfm", {"cin": [8, 8]}, "one layer per hidden layer"),
    ],
)
def test_ill_typed_or_inconsistent_hyperparameters_are_rejected(
    architecture: str, hparams: dict, message: str, tiny_schema: FeatureSchema
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(architecture, tiny_schema, "click", **hparams)
    with pytest.raises(ConfigError, match=message):
        parse_hyperparameters(architecture, hparams)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_hparams_record_defaults_and_no_batchnorm(
    architecture: str, tiny_schema: FeatureSchema
) -> None:
    model = build_model(architecture, tiny_schema, "click")
    assert model.hparams == resolved_hyperparameters(
        parse_hyperparameters(architecture, {}), mode="python"
    )
    assert model.schema_hash == tiny_schema.hash
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert not batchnorms, "BatchNorm statistics drift when a component is frozen in fusion"
