"""Worker faults: a Ray Train worker killed mid-epoch resumes from its last checkpoint.

Slow (two Ray Train runs of a few epochs each): in the reliability job
(`python -m pytest -m reliability`, `benchmarks/reliability.py`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.train.loop import TrainConfig
from emm_ray.train.members import ZooModelFactory
from emm_ray.train.ray_job import (
    ModuleFactory,
    TrainJob,
    TrainOutcome,
    WorkerResources,
    run_train_job,
)
from tests.ray_processes import processes_titled

pytestmark = [pytest.mark.ray, pytest.mark.reliability]


def _fused_factory(schema_dir: Path) -> ModuleFactory:
    """A fused model over two frozen members (seeded, untrained: the kill is the point)."""
    from emm_ray.data.schema import FeatureSchema
    from emm_ray.fusion import FusionConfig
    from emm_ray.fusion.stage import FusedModelFactory, MemberWeights
    from emm_ray.models.registry import build_model
    from emm_ray.tracking.artifacts import ArtifactManifest, parameter_checksum
    from emm_ray.train.members import MEMBER_KIND

    schema = FeatureSchema.load(schema_dir)
    torch.manual_seed(0)
    members = []
    for name, architecture, task in (
        ("mlp_income", "mlp", "income"),
        ("wide_nm", "wide_deep", "never_married"),
    ):
        model = build_model(architecture, schema, task, embed_dim=8, hidden=(32, 16))
        manifest = ArtifactManifest(
            kind=MEMBER_KIND,
            name=name,
            architecture=architecture,
            tasks=(task,),
            hparams=model.hparams,
            schema_hash=schema.hash,
            parameter_checksum=parameter_checksum(model.state_dict()),
        )
        members.append(MemberWeights.from_manifest(manifest, model.state_dict()))
    return FusedModelFactory(tuple(members), FusionConfig(d_model=8, heads=2, top_k=1))


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("trained", ["member", "fused"])
def test_a_worker_killed_mid_epoch_resumes_from_its_last_checkpoint(
    ray_cluster: None, tmp_path: Path, figures_log: Any, trained: str
) -> None:
    """SIGKILL the only worker after its first checkpoint, training a pool member and
    training the fused model: the driver restarts the run from its newest checkpoint
    (`run_train_job`), and it ends with 4 epochs and the validation AUC of the same run
    left alone."""
    prepared = prepare_dataset(DatasetConfig(rows=100_000, seed=7), tmp_path / "data")
    factory: ModuleFactory = (
        ZooModelFactory("mlp", "income", {"embed_dim": 8, "hidden": [64, 32]})
        if trained == "member"
        else _fused_factory(prepared.path)
    )
    tasks = ("income",) if trained == "member" else ("income", "never_married")
    job = TrainJob(
        name=f"fault-{trained}",
        module_factory=factory,
        data_dir=str(prepared.path),
        tasks=tasks,
        config=TrainConfig(epochs=4, batch_size=512, patience=None, num_threads=1),
        storage_path=str(tmp_path / "killed"),
        resources=WorkerResources(cpu=0.5),
        data_mode="memory",
    )
    assert job.max_failures >= 1
    left_alone = run_train_job(replace(job, storage_path=str(tmp_path / "left-alone")))

    finished: dict[str, TrainOutcome | BaseException] = {}

    def train() -> None:
        try:
            finished["outcome"] = run_train_job(job)
        except BaseException as error:  # reported below, not lost in the thread
            finished["error"] = error

    others = processes_titled("ray::RayTrainWorker")  # of other jobs on the machine
    run = threading.Thread(target=train)
    run.start()
    deadline = time.monotonic() + 300
    while not list((tmp_path / "killed").glob("*/checkpoint_*")):
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.1)
    time.sleep(0.3)  # into a later epoch
    (worker,) = processes_titled("ray::RayTrainWorker") - others
    os.kill(worker, signal.SIGKILL)
    run.join(timeout=900)
    assert "error" not in finished, f"the run did not survive the kill: {finished['error']!r}"
    outcome = finished["outcome"]
    assert isinstance(outcome, TrainOutcome)
    resumed_ok = len(outcome.history) == 4 and outcome.resumed_after_epoch >= 1
    figures_log(
        check=f"train worker killed mid-epoch ({trained})",
        faults_injected=1,
        faults_survived=int(resumed_ok and abs(outcome.best_score - left_alone.best_score) < 0.01),
        epochs=len(outcome.history),
        resumed_after_epoch=outcome.resumed_after_epoch,
        val_auc_left_alone=round(left_alone.best_score, 4),
        val_auc_after_kill=round(outcome.best_score, 4),
    )
    assert worker not in processes_titled("ray::RayTrainWorker")
    assert left_alone.resumed_after_epoch == 0
    assert outcome.resumed_after_epoch >= 1, "the restarted run began from scratch"
    assert resumed_ok, [h.get("epoch") for h in outcome.history]
    assert outcome.best_score == pytest.approx(left_alone.best_score, abs=0.01)


@pytest.mark.timeout(1200)
def test_a_killed_member_trainer_is_restarted_and_the_rerun_trains_nothing_twice(
    ray_cluster: None, tmp_path: Path, figures_log: Any
) -> None:
    """SIGKILL one member's trainer (its Train controller, which owns the worker group)
    while three members train at once: the driver restarts that member's run (from its
    newest checkpoint, if it wrote one), so all three finish their epochs and are logged; running
    the pool again trains none of them again. (A member whose training fails for good is
    reported failed alone: `test_pool_ray.py`.)"""
    from emm_ray.train.pool import PoolReport, train_pool
    from emm_ray.train.pool_spec import PoolSpec

    prepared = prepare_dataset(DatasetConfig(rows=60_000, seed=4), tmp_path / "data")
    small = {"embed_dim": 8, "hidden": [32, 16]}
    spec = PoolSpec.model_validate(
        {
            "name": "fault_pool",
            "experiment": "fault-pool",
            "train": {"epochs": 4, "batch_size": 512, "patience": None, "num_threads": 1},
            "resources": {"cpu": 0.5},
            "members": [
                {"name": "mlp_income", "architecture": "mlp", "task": "income", "hparams": small},
                {
                    "name": "deepfm_married",
                    "architecture": "deepfm",
                    "task": "never_married",
                    "hparams": small,
                },
                {
                    "name": "wide_income",
                    "architecture": "wide_deep",
                    "task": "income",
                    "hparams": small,
                },
            ],
        }
    )
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    reports: dict[str, PoolReport | BaseException] = {}

    def train() -> None:
        try:
            reports["first"] = train_pool(
                spec, prepared, storage_path=tmp_path / "ray", tracking_uri=tracking_uri
            )
        except BaseException as error:
            reports["error"] = error

    others = processes_titled("ray::TrainController")  # of other jobs on the machine
    run = threading.Thread(target=train)
    run.start()
    deadline = time.monotonic() + 300
    checkpoints = tmp_path / "ray"
    while len(processes_titled("ray::TrainController") - others) < 3 or not list(
        checkpoints.glob("*/checkpoint_*")
    ):
        assert time.monotonic() < deadline, "the three trainers did not start"
        time.sleep(0.2)
    victim = sorted(processes_titled("ray::TrainController") - others)[0]
    os.kill(victim, signal.SIGKILL)
    run.join(timeout=900)
    assert "error" not in reports, f"the pool did not survive the kill: {reports['error']!r}"
    first = reports["first"]
    assert isinstance(first, PoolReport)
    first_statuses = {m.name: m.status for m in first.members}
    epochs = {m.name: m.epochs_run for m in first.members}
    rerun = train_pool(spec, prepared, storage_path=tmp_path / "ray", tracking_uri=tracking_uri)
    statuses = {m.name: m.status for m in rerun.members}
    survived = set(first_statuses.values()) == {"trained"} and set(epochs.values()) == {4}
    figures_log(
        check="member trainer killed",
        faults_injected=1,
        faults_survived=int(survived),
        first_run=first_statuses,
        epochs=epochs,
        rerun=statuses,
        duplicate_runs=sum(status == "trained" for status in statuses.values()),
    )
    assert victim not in processes_titled("ray::TrainController")
    assert survived, (first_statuses, epochs, [m.error[:300] for m in first.members if m.error])
    assert set(statuses.values()) == {"skipped"}, statuses
