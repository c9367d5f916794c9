"""The run config fails before any work on unknown stages, keys and missing files."""

from __future__ import annotations

from pathlib import Path

import pytest

from emm_ray.errors import ConfigError
from emm_ray.pipeline.config import STAGES, load_pipeline_config
from tests.conftest import REPO_ROOT


def test_default_config_runs_every_stage_in_order() -> None:
    config = load_pipeline_config(None)
    assert config.stages == STAGES
    assert config.pool_spec().members
    assert config.tune_spec().num_samples >= 1


def test_shipped_configs_load() -> None:
    for path in (REPO_ROOT / "configs" / "smoke.yaml",):
        load_pipeline_config(path)


def test_unknown_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown stage.*'deploy'"):
        load_pipeline_config(None, "prepare,deploy")
    path = tmp_path / "run.yaml"
    path.write_text("stages: [prepare, deploy]\n")
    with pytest.raises(ConfigError, match=f"{path}.*stages"):
        load_pipeline_config(path)


def test_missing_pool_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("pool: no/such/pool.yaml\n")
    with pytest.raises(ConfigError, match="pool: file no/such/pool.yaml not found"):
        load_pipeline_config(path)


def test_missing_real_data_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        f"data: {{name: census, source: real, train_path: {tmp_path / 'census.data'}}}\n"
    )
    with pytest.raises(ConfigError, match="census.data"):
        load_pipeline_config(path)


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("pools: configs/pools/smoke.yaml\n")
    with pytest.raises(ConfigError, match="pools"):
        load_pipeline_config(path)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("fuse: {train: {epochs: many}}\n", r"fuse\.train\.epochs: Input should be a valid int"),
        ("stages: prepare\n", "stages"),
        ("serve: {port: -1}\n", r"serve\.port"),
        ("- prepare\n- pool\n", "<root>: Input should be a valid dictionary"),
        ("fuse: {train: {epochs: 2}\n", "is not valid YAML"),
    ],
)
def test_wrong_types_and_broken_yaml_name_the_file_and_field(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"config file {path}.*{named}"):
        load_pipeline_config(path)
