"""Baseline searches: the budget equals the fusion search's, bad options fail on load, and a
real Ray Tune search over a baseline returns hyperparameters that rebuild it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emm_ray.baselines import build_baseline
from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.errors import ConfigError
from emm_ray.tune.baselines import (
    BaselineSearchSpec,
    load_baseline_search,
    search_baseline,
    trial_hparams,
)
from emm_ray.tune.space import load_tune_spec

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "tune_spaces" / "baselines" / "default.yaml"


def test_shipped_baseline_search_has_the_fusion_search_budget() -> None:
    baselines = load_baseline_search(SHIPPED)
    fusion = load_tune_spec(REPO / "tune_spaces" / "default.yaml")
    assert baselines.budget == (fusion.num_samples, fusion.asha.max_t)
    assert baselines.asha == fusion.asha
    for name in ("shared_bottom", "mmoe", "ple", "esmm", "aitm"):
        assert "lr" in baselines.space(name)


def test_width_sets_the_main_mlp_halving_per_layer() -> None:
    assert trial_hparams("mmoe", {"width": 256}, {})["expert_hidden"] == [256, 128]
    assert trial_hparams("aitm", {"width": 128}, {"funnel": False})["tower"] == [128, 64, 32]
    assert trial_hparams("ple", {"shared_experts": 3}, {})["shared_experts"] == 3


def test_an_option_value_the_baseline_refuses_fails_when_the_file_is_loaded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"per_baseline": {"mmoe": {"experts": {"type": "choice", "values": [0]}}}})
    )
    with pytest.raises(ConfigError, match="experts"):
        load_baseline_search(path).space("mmoe")
    path.write_text(yaml.safe_dump({"per_baseline": {"mmoe": {"expertz": 4}}}))
    with pytest.raises(ConfigError, match="expertz"):
        load_baseline_search(path)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_real_search_returns_hyperparameters_that_rebuild_the_baseline(
    ray_cluster: None, tmp_path: Path
) -> None:
    prepared = prepare_dataset(DatasetConfig(rows=3000, seed=0), tmp_path / "data")
    spec = BaselineSearchSpec.model_validate(
        {
            "search": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
            "per_baseline": {"mmoe": {"experts": {"type": "choice", "values": [2, 3]}}},
            "num_samples": 2,
            "asha": {"max_t": 2, "grace_period": 1},
            "batch_size": 512,
        }
    )
    result = search_baseline("mmoe", spec, data_dir=prepared.path, storage_path=tmp_path / "tune")
    assert result.trials == 2 and 0.5 < result.val_auc <= 1.0
    assert 1e-3 <= result.lr <= 1e-2 and result.hparams["experts"] in (2, 3)
    model = build_baseline("mmoe", prepared.schema, **result.hparams)
    assert model.hparams["experts"] == result.hparams["experts"]
