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

from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.train.loop import TrainConfig
from emm_ray.train.members import ZooModelFactory
from emm_ray.train.ray_job import TrainJob, TrainOutcome, WorkerResources, run_train_job

pytestmark = [pytest.mark.ray, pytest.mark.reliability]


def _train_worker_pids() -> set[int]:
    """Live Ray Train worker processes, by the process title Ray gives actors."""
    pids = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::RayTrainWorker"):
            pids.add(int(cmdline.parent.name))
    return pids


@pytest.mark.timeout(1200)
def test_a_worker_killed_mid_epoch_resumes_from_its_last_checkpoint(
    ray_cluster: None, tmp_path: Path, reliability_log: Any
) -> None:
    """SIGKILL the only worker during epoch 2 of 4: Train restarts the worker group from
    the epoch-1 checkpoint (`FailureConfig`), and the run ends with 4 epochs and the
    validation AUC of the same run left alone."""
    prepared = prepare_dataset(DatasetConfig(rows=100_000, seed=7), tmp_path / "data")
    job = TrainJob(
        name="fault",
        module_factory=ZooModelFactory("mlp", "income", {"embed_dim": 8, "hidden": [64, 32]}),
        data_dir=str(prepared.path),
        tasks=("income",),
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

    run = threading.Thread(target=train)
    run.start()
    deadline = time.monotonic() + 300
    while not list((tmp_path / "killed").glob("*/checkpoint_*")):
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.1)
    time.sleep(0.3)  # into epoch 2
    (worker,) = _train_worker_pids()
    os.kill(worker, signal.SIGKILL)
    run.join(timeout=900)
    assert "error" not in finished, f"the run did not survive the kill: {finished['error']!r}"
    outcome = finished["outcome"]
    assert isinstance(outcome, TrainOutcome)
    resumed_ok = len(outcome.history) == 4 and outcome.resumed_after_epoch >= 1
    reliability_log(
        check="train worker killed mid-epoch",
        faults_injected=1,
        faults_survived=int(resumed_ok and abs(outcome.best_score - left_alone.best_score) < 0.01),
        epochs=len(outcome.history),
        resumed_after_epoch=outcome.resumed_after_epoch,
        val_auc_left_alone=round(left_alone.best_score, 4),
        val_auc_after_kill=round(outcome.best_score, 4),
    )
    assert worker not in _train_worker_pids()
    assert left_alone.resumed_after_epoch == 0
    assert outcome.resumed_after_epoch >= 1, "the restarted run began from scratch"
    assert resumed_ok, [h.get("epoch") for h in outcome.history]
    assert outcome.best_score == pytest.approx(left_alone.best_score, abs=0.01)
