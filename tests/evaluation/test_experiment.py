"""Run configs: the shipped YAML files validate; mistakes name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from emm_ray.config import load_yaml_config
from emm_ray.errors import ConfigError
from emm_ray.evaluation.experiment import load_experiment
from emm_ray.fusion import FusionConfig
from tests.conftest import REPO_ROOT


def test_census_config_describes_the_real_run() -> None:
    config = load_experiment(REPO_ROOT / "configs" / "census.yaml")
    assert config.data.name == "census" and config.data.source == "real"
    assert config.data.train_path is None  # files come from EMM_DATA_DIR
    assert config.fuse.data_mode == "stream" and config.fuse.fusion.variant == "emm"
    assert set(config.baselines.names) == {"shared_bottom", "mmoe", "ple", "esmm", "aitm"}
    assert config.fuse.train.epochs == config.baselines.train.epochs


def test_fusion_presets_validate() -> None:
    emm = load_yaml_config(REPO_ROOT / "configs/fusion/emm.yaml", FusionConfig)
    reference = load_yaml_config(REPO_ROOT / "configs/fusion/reference.yaml", FusionConfig)
    fresh = load_yaml_config(REPO_ROOT / "configs/fusion/emm-fresh.yaml", FusionConfig)
    # the opt-in preset differs from the shipped one in its level-0 input only
    assert fresh == emm.model_copy(update={"embedding": "fresh"})
    assert (emm.variant, emm.embedding, emm.component_input) == ("emm", "pool", "residual")
    assert (emm.prediction, emm.ensemble, emm.ensemble_inputs) == (
        "pool_residual",
        "stacked",
        "pool",
    )
    assert (reference.variant, reference.embedding, reference.component_input) == (
        "reference",
        "fresh",
        "fused",
    )


def test_a_run_config_names_a_fusion_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # preset paths are read from the working directory
    path = tmp_path / "run.yaml"
    path.write_text("fuse:\n  fusion: configs/fusion/emm-fresh.yaml\n")
    fresh = load_yaml_config(REPO_ROOT / "configs/fusion/emm-fresh.yaml", FusionConfig)
    assert load_experiment(path).fuse.fusion == fresh
    path.write_text("fuse:\n  fusion: configs/fusion/emm-frsh.yaml\n")
    with pytest.raises(ConfigError, match=r"fuse\.fusion: .*emm-frsh\.yaml does not exist"):
        load_experiment(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fuse:\n  fusion:\n    topk: 2\n", r"fuse\.fusion\.topk: Extra inputs"),
        ("fuse:\n  fusion:\n    d_model: 30\n    heads: 4\n", "divisible by heads"),
        ("baselines:\n  names: [mmoe, ple2]\n", r"unknown baseline\(s\) \['ple2'\]"),
        ("baselines:\n  hparams: {mmoe: {experts: 0}}\n", "'mmoe': experts"),
    ],
)
def test_config_mistakes_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_experiment(path)
    assert str(path) in str(error.value)
