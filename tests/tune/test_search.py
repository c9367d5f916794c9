"""A real search: 4 Tune trials over a tiny frozen pool on the session cluster.

Pool members are trained in-process on tiny synthetic census data and logged as
`train_pool` logs them; the search (tune_spaces/tiny.yaml) fuses them with ASHA and
registers the best model, which is then loaded the way Serve loads it and re-scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.data.streaming import load_split
from emm_ray.serve.loading import load_registered
from emm_ray.tracking.store import tag, tracking_client
from emm_ray.tune.runner import run_search
from emm_ray.tune.space import load_tune_spec
from emm_ray.tune.tracking import TRIAL_KIND
from tests.tune.pool import log_tiny_pool

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_search_registers_the_best_fused_model(ray_cluster: None, tmp_path: Path) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    prepared = prepare_dataset(DatasetConfig(rows=4000, seed=0), tmp_path / "data")
    pool_runs = log_tiny_pool(prepared, tracking_uri)
    spec = load_tune_spec(REPO / "tune_spaces" / "tiny.yaml")

    outcome = run_search(
        spec,
        data_dir=prepared.path,
        pool_runs=pool_runs,
        model_name="emm-tiny",
        storage_path=tmp_path / "ray",
        tracking_uri=tracking_uri,
    )

    assert outcome.status == "searched" and len(outcome.trials) == spec.num_samples
    completed = [t for t in outcome.trials if t.outcome == "completed"]
    assert completed, outcome.trials
    best = max(completed, key=lambda t: t.val_auc or 0.0)
    assert outcome.best_metrics["val_auc"] == pytest.approx(best.val_auc)
    assert {t.config["experts_per_task"] for t in outcome.trials} <= {1, 2}

    client = tracking_client(tracking_uri)
    version = client.get_model_version_by_alias("emm-tiny", "champion")
    assert str(version.version) == outcome.version
    assert version.run_id == outcome.run_id
    assert float(version.tags["metric.val_auc"]) == pytest.approx(best.val_auc, abs=1e-5)
    trial_runs = client.search_runs(
        [client.get_experiment_by_name("emm-tune").experiment_id],
        filter_string=f"tags.`{tag('kind')}` = '{TRIAL_KIND}'",
    )
    assert len(trial_runs) == spec.num_samples
    assert all(r.info.status == "FINISHED" for r in trial_runs)
    assert all("val_auc" in r.data.metrics for r in trial_runs), [
        (r.data.tags, r.data.metrics) for r in trial_runs
    ]

    servable, description = load_registered("models:/emm-tiny@champion", tracking_uri)
    assert description.version == outcome.version and servable.kind == "fused"
    assert servable.tasks == ("income", "never_married")
    validation = load_split(prepared.path, "validation")
    probabilities = servable.predict_proba(validation.sparse.numpy(), validation.dense.numpy())
    aucs = [roc_auc_score(validation.labels[:, i].numpy(), probabilities[:, i]) for i in range(2)]
    # 1e-4: serving scores float64 probabilities, the loop float32 logits; tied scores can
    # order differently (seen: 6e-6), while another trial's weights differ by far more.
    assert np.mean(aucs) == pytest.approx(best.val_auc, abs=1e-4), "registered = best weights"
    assert set(servable.module.member_names) <= set(pool_runs)

    again = run_search(
        spec,
        data_dir=prepared.path,
        pool_runs=pool_runs,
        model_name="emm-tiny",
        storage_path=tmp_path / "ray",
        tracking_uri=tracking_uri,
    )
    assert again.status == "skipped" and again.version == outcome.version
    assert again.best_config == outcome.best_config
    assert again.best_metrics == outcome.best_metrics
