"""The fuse, baseline and evaluate stages end to end on the local Ray cluster and MLflow.

One small pool (three members, one epoch) is trained once for the module on synthetic
census data; then: fusion of two members on Ray Train with Ray Data streaming, a rerun
that reuses the finished run, plug-and-play of the third member, a baseline, and the
evaluation pipeline on the test split and on a raw census file it never saw. About two
minutes on an idle 2-core machine (six Ray Train runs); the first test's timeout covers
the module's set-up.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from emm_ray.baselines import stage as baseline_stage
from emm_ray.baselines.stage import BaselineSpec, find_baselines, train_baselines
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.streaming import load_split
from emm_ray.evaluation.report import read_report
from emm_ray.evaluation.stage import run_evaluation
from emm_ray.fusion.stage import (
    FuseResult,
    FuseSpec,
    find_fused_run,
    fuse_pool,
    load_fused_run,
    plug_members,
)
from emm_ray.tracking.store import tag
from emm_ray.train.members import load_member
from emm_ray.train.pool import train_pool
from emm_ray.train.pool_spec import PoolSpec
from emm_ray.train.ray_job import TrainJob, TrainOutcome
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.ray]

SMALL = {"embed_dim": 4, "hidden": [16, 8]}
EPOCH = {"epochs": 1, "batch_size": 512, "patience": None, "num_threads": 1}
DATA = {"rows": 4000, "seed": 5}


@dataclass
class Stages:
    prepared: PreparedDataset
    tracking_uri: str
    storage: Path
    spec: FuseSpec
    fused: FuseResult
    again: FuseResult
    plugged: FuseResult
    member_runs: dict[str, str]


@pytest.fixture(scope="module")
def stages(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Stages:
    root = tmp_path_factory.mktemp("stages")
    tracking_uri = f"sqlite:///{root / 'mlruns.db'}"
    prepared = prepare_dataset(DatasetConfig(**DATA), root / "prepared")
    pool = PoolSpec.model_validate(
        {
            "name": "fuse_test",
            "experiment": "fuse-test-pool",
            "train": EPOCH,
            "resources": {"cpu": 0.5},
            "members": [
                {"name": "mlp_income", "architecture": "mlp", "task": "income", "hparams": SMALL},
                {
                    "name": "wide_married",
                    "architecture": "wide_deep",
                    "task": "never_married",
                    "hparams": SMALL,
                },
                {
                    "name": "dcn_married",
                    "architecture": "dcn_v2",
                    "task": "never_married",
                    "hparams": {**SMALL, "cross_rank": 2},
                },
            ],
        }
    )
    report = train_pool(pool, prepared, storage_path=root / "ray", tracking_uri=tracking_uri)
    assert not report.failed, report.table()
    spec = FuseSpec.model_validate(
        {
            "name": "fused-test",
            "experiment": "fuse-test",
            "pool_experiment": "fuse-test-pool",
            "members": ["mlp_income", "wide_married"],
            "fusion": {"d_model": 8, "heads": 2, "tower_hidden": [8]},
            "train": {**EPOCH, "epochs": 2},
            "resources": {"cpu": 0.5},
            "data_mode": "stream",
        }
    )
    common = {"storage_path": root / "ray", "tracking_uri": tracking_uri}
    fused = fuse_pool(spec, prepared, **common)
    again = fuse_pool(spec, prepared, **common)
    plugged = plug_members(
        spec.model_copy(update={"name": "fused-test-plugged"}),
        prepared,
        fused.run_id,
        ["dcn_married"],
        **common,
    )
    return Stages(prepared, tracking_uri, root, spec, fused, again, plugged, report.run_ids())


@pytest.mark.timeout(1200)
def test_fusion_runs_on_ray_train_and_logs_one_self_describing_artifact(stages: Stages) -> None:
    fused = stages.fused
    assert fused.status == "trained" and fused.outcome is not None
    assert len(fused.outcome.history) == 2
    client = MlflowClient(stages.tracking_uri)
    run = client.get_run(fused.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["fusion.d_model"] == "8"
    assert 0.5 < run.data.metrics["best_val_auc"] <= 1.0
    assert 0 < run.data.metrics["trainable_parameters"] < run.data.metrics["total_parameters"]
    manifest = fused.manifest
    assert manifest.kind == "fused" and manifest.tasks == ("income", "never_married")
    assert [c.name for c in manifest.components] == ["mlp_income", "wide_married"]
    assert [c.extra["run_id"] for c in manifest.components] == [
        stages.member_runs["mlp_income"],
        stages.member_runs["wide_married"],
    ]
    schema = stages.prepared.schema
    model, _ = load_fused_run(client, fused.run_id, schema)
    for aligned, name in zip(model.members, ["mlp_income", "wide_married"], strict=True):
        member = load_member(stages.member_runs[name], schema=schema, client=client).model
        trained = [*member.embedding.parameters(), *member.blocks.parameters()]
        fused_copy = [*aligned.embedding.parameters(), *aligned.components.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(trained, fused_copy, strict=True))
    fingerprint = str(stages.prepared.split_info["config_hash"])
    assert (
        find_fused_run(client, "fuse-test", "fused-test", schema.hash, fingerprint) == fused.run_id
    )


@pytest.mark.timeout(120)
def test_rerunning_the_same_fusion_reuses_the_finished_run(stages: Stages) -> None:
    assert stages.again.status == "skipped" and stages.again.run_id == stages.fused.run_id
    assert stages.again.manifest.parameter_checksum == stages.fused.manifest.parameter_checksum


@pytest.mark.timeout(120)
def test_plug_and_play_adds_a_member_without_touching_the_base_model(stages: Stages) -> None:
    plugged = stages.plugged
    assert plugged.status == "trained"
    assert plugged.manifest.hparams["steps"] == [["mlp_income", "wide_married"], ["dcn_married"]]
    client = MlflowClient(stages.tracking_uri)
    base, _ = load_fused_run(client, stages.fused.run_id)
    extended, _ = load_fused_run(client, plugged.run_id)
    extended_state = extended.state_dict()
    assert all(torch.equal(extended_state[k], v) for k, v in base.state_dict().items())
    test = load_split(stages.prepared.path, "test")
    with torch.no_grad():
        for scale in extended.plugin_scales():
            scale.zero_()
        assert torch.equal(extended(test.sparse, test.dense), base(test.sparse, test.dense))


@pytest.mark.timeout(600)
def test_baselines_and_evaluation_report_every_model_on_the_same_rows(
    stages: Stages, tmp_path: Path
) -> None:
    spec = BaselineSpec.model_validate(
        {
            "experiment": "fuse-test-baselines",
            "names": ["mmoe"],
            "hparams": {"mmoe": {"embed_dim": 4, "experts": 2, "expert_hidden": [8], "tower": [4]}},
            "train": EPOCH,
            "resources": {"cpu": 0.5},
        }
    )
    runs = train_baselines(
        spec, stages.prepared, storage_path=stages.storage / "ray", tracking_uri=stages.tracking_uri
    )
    assert [(r.name, r.status) for r in runs] == [("mmoe", "trained")]
    client = MlflowClient(stages.tracking_uri)
    schema = stages.prepared.schema
    fingerprint = str(stages.prepared.split_info["config_hash"])
    found = find_baselines(client, "fuse-test-baselines", schema.hash, fingerprint)
    assert found == {r.name: r.run_id for r in runs}

    result = run_evaluation(
        stages.fused.run_id,
        tmp_path / "report",
        prepared=stages.prepared.path,
        baseline_runs=found,
        tracking_uri=stages.tracking_uri,
    )
    rows = read_report(tmp_path / "report")
    assert rows == result.rows
    test_rows = stages.prepared.num_rows("test")
    assert {(r.model, r.kind, r.task) for r in rows} == {
        ("fused-test", "fused", "income"),
        ("fused-test", "fused", "never_married"),
        ("mlp_income", "pool", "income"),
        ("wide_married", "pool", "never_married"),
        ("mmoe", "baseline", "income"),
        ("mmoe", "baseline", "never_married"),
    }
    assert all(r.rows == test_rows and r.auc is not None for r in rows)
    assert (tmp_path / "report" / "gates" / "gates.png").is_file()
    logged = client.get_run(result.run_id)
    assert logged.data.metrics["test_auc.fused-test.income"] == next(
        r.auc for r in rows if r.model == "fused-test" and r.task == "income"
    )
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"report.json", "report.md", "gates"} <= artifacts


@pytest.mark.timeout(600)
def test_a_failing_baseline_leaves_the_others_trained_and_logged(
    stages: Stages, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two baselines train at once; one job fails. The other finishes and is logged, the
    failure is raised afterwards, and a rerun trains only the failed one."""
    spec = BaselineSpec.model_validate(
        {
            "experiment": "fuse-test-baselines-failure",
            "names": ["shared_bottom", "mmoe"],
            "hparams": {
                "shared_bottom": {"embed_dim": 4, "bottom": [8], "tower": [4]},
                "mmoe": {"embed_dim": 4, "experts": 2, "expert_hidden": [8], "tower": [4]},
            },
            "train": EPOCH,
            "resources": {"cpu": 0.5},
            "max_concurrent": 2,
        }
    )
    real_job = baseline_stage.run_job

    def shared_bottom_fails(job: TrainJob) -> TrainOutcome:
        if job.name == "baseline-shared_bottom":
            raise RuntimeError("injected failure of shared_bottom's training job")
        return real_job(job)

    common = {"storage_path": stages.storage / "ray", "tracking_uri": stages.tracking_uri}
    monkeypatch.setattr(baseline_stage, "run_job", shared_bottom_fails)
    with pytest.raises(RuntimeError, match="injected failure of shared_bottom"):
        train_baselines(spec, stages.prepared, **common)
    monkeypatch.undo()

    client = MlflowClient(stages.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert runs["mmoe"].info.status == "FINISHED"
    assert 0.0 <= runs["mmoe"].data.metrics["best_val_auc"] <= 1.0
    assert client.list_artifacts(runs["mmoe"].info.run_id, "model")
    assert runs["shared_bottom"].info.status == "FAILED"
    assert "injected failure" in runs["shared_bottom"].data.tags[tag("error")]

    again = train_baselines(spec, stages.prepared, **common)
    assert [(r.name, r.status) for r in again] == [
        ("shared_bottom", "trained"),
        ("mmoe", "skipped"),
    ]
    assert again[1].run_id == runs["mmoe"].info.run_id


@pytest.mark.timeout(300)
def test_evaluate_pipeline_scores_a_raw_file_it_never_saw(
    stages: Stages, tmp_path: Path, data_dir: Path
) -> None:
    raw = tmp_path / "census-sample.data"
    with gzip.open(data_dir / "census-income" / "census-income.data.gz", "rt") as source:
        raw.write_text("".join(next(source) for _ in range(300)))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": DATA,
                "prepared_dir": str(stages.prepared.path),
                "fuse": {"name": "fused-test", "experiment": "fuse-test"},
            }
        )
    )
    output = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "pipelines" / "evaluate.py"),
            "--config",
            str(config),
            "--test-path",
            str(raw),
            "--baselines",
            "none",
            "--output",
            str(output),
            "--tracking-uri",
            stages.tracking_uri,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads((output / "report.json").read_text())
    assert {(r["model"], r["kind"]) for r in rows} == {
        ("fused-test", "fused"),
        ("mlp_income", "pool"),
        ("wide_married", "pool"),
    }
    assert all(
        r["rows"] == 300 and set(r) == {"model", "kind", "task", "auc", "logloss", "rows"}
        for r in rows
    )
    assert "| fused-test | fused |" in (output / "report.md").read_text()
