"""Serve configs: the shipped YAML files are valid Serve configs, bad args name the key."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from emm_ray.errors import ConfigError
from emm_ray.serve.app import DEPLOYMENT_NAME
from emm_ray.serve.settings import parse_settings

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "serve_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_a_loopback_serve_config_with_valid_args(path: Path) -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert config.http_options.host == "127.0.0.1"
    for app in config.applications:
        module, attribute = app.import_path.split(":")
        assert callable(getattr(importlib.import_module(module), attribute))
        settings = parse_settings(app.args)
        assert settings.tracking_uri and settings.model_uri.startswith("models:/")
        assert [d.name for d in app.deployments] == [DEPLOYMENT_NAME]


def test_relative_sqlite_store_is_pinned_to_the_callers_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = parse_settings({"model_uri": "models:/m/1", "tracking_uri": "sqlite:///x.db"})
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert parse_settings({"model_uri": "models:/m@prod"}).tracking_uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"model_uri": "runs:/abc/model"}, "model_uri: Value error, expected models:/"),
        ({"model_uri": "models:/m"}, "model_uri: Value error, expected models:/"),
        ({}, "model_uri: Field required"),
        ({"model_uri": "models:/m/1", "max_batch": 3}, "max_batch: Extra inputs"),
        ({"model_uri": "models:/m/1", "unknown_category": "drop"}, "unknown_category: Input"),
        ({"model_uri": "models:/m/1", "max_records_per_request": 0}, "max_records_per_request"),
        (
            {"model_uri": "models:/m/1", "max_batch_size": 8, "max_records_per_request": 9},
            "must not exceed max_batch_size (8)",
        ),
    ],
)
def test_bad_args_name_the_key(args: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="serve config args") as error:
        parse_settings(args)
    assert message in str(error.value)
