"""No name a user or a config gives can point outside its directory (issue 12, item 5).

Names become MLflow run and model names, Ray Train run directories under the storage
path and report directories under `outputs/`: each is refused if it could climb out.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from emm_ray.errors import ConfigError
from emm_ray.fusion.stage import FuseSpec
from emm_ray.pipeline.config import PipelineConfig
from emm_ray.serve.settings import parse_settings
from emm_ray.train.pool_spec import MemberSpec, PoolSpec

CLIMBING = ["../evil", "..", "a/../../b", "/etc/passwd", "a\\..\\b", ".hidden", "x/y"]


@pytest.mark.parametrize("name", CLIMBING)
def test_pool_and_member_names_cannot_be_paths(name: str) -> None:
    member = {"name": "ok", "architecture": "mlp", "task": "income"}
    with pytest.raises(ValidationError, match="name"):
        PoolSpec(name=name, members=(MemberSpec(**member),))
    with pytest.raises(ValidationError, match="name"):
        MemberSpec(**{**member, "name": name})


@pytest.mark.parametrize("name", CLIMBING)
def test_fused_and_registered_model_names_cannot_be_paths(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        FuseSpec(name=name)
    with pytest.raises(ValidationError, match="model_name"):
        PipelineConfig(model_name=name)


@pytest.mark.parametrize(
    "uri",
    ["models:/../3", "models:/..@champion", "models:/./1", "models:/a/../b/1", "models:/a\\b/1"],
)
def test_a_model_uri_cannot_name_a_path(uri: str) -> None:
    with pytest.raises(ConfigError, match="model_uri"):
        parse_settings({"model_uri": uri})


def test_ordinary_names_still_pass() -> None:
    assert parse_settings({"model_uri": "models:/emm-census.v2@champion"}).model_uri
    assert FuseSpec(name="emm_2.1-b").name == "emm_2.1-b"
