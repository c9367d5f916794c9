"""The Ray Train runner on its streaming path (Ray Data shards in, best weights out), and
small jobs that skip it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.data.streaming import load_split
from emm_ray.train.loop import TensorBatches, TrainConfig, evaluate
from emm_ray.train.members import ZooModelFactory
from emm_ray.train.ray_job import (
    RESUME_FILE,
    TrainJob,
    WorkerResources,
    run_job,
    run_train_job,
    trains_in_process,
)

pytestmark = [pytest.mark.ray]


@pytest.mark.timeout(420)
def test_streamed_training_scores_the_whole_validation_split(
    ray_cluster: None, tmp_path: Path
) -> None:
    """Validation is not sharded: the AUC the worker reports is the AUC of the returned
    weights on the full validation split, recomputed here."""
    prepared = prepare_dataset(DatasetConfig(rows=4000, seed=5), tmp_path / "data")
    job = TrainJob(
        name="stream",
        module_factory=ZooModelFactory("mlp", "never_married", {"embed_dim": 4, "hidden": [16]}),
        data_dir=str(prepared.path),
        tasks=("never_married",),
        config=TrainConfig(epochs=2, batch_size=256, eval_batch_size=500, patience=None),
        storage_path=str(tmp_path / "ray"),
        resources=WorkerResources(cpu=0.5),
        data_mode="stream",
    )
    outcome = run_train_job(job)
    assert [h["train_rows"] for h in outcome.history] == [prepared.num_rows("train")] * 2
    model = ZooModelFactory("mlp", "never_married", {"embed_dim": 4, "hidden": [16]})(
        prepared.schema
    )
    model.load_state_dict(outcome.state_dict)
    validation = TensorBatches(load_split(prepared.path, "validation"), 65536)
    task = prepared.schema.task_index("never_married")
    recomputed = evaluate(model, validation, [task], ["never_married"])["auc"]
    assert recomputed == pytest.approx(outcome.best_score, abs=1e-6)
    assert outcome.best_score > 0.6
    checkpoints = list(Path(outcome.run_path).glob(f"checkpoint_*/{RESUME_FILE}"))
    assert len(checkpoints) == 1  # one kept (num_to_keep=1), written every epoch


@pytest.mark.timeout(420)
def test_a_small_job_trains_in_one_ray_task_exactly_as_on_ray_train(
    ray_cluster: None, tmp_path: Path
) -> None:
    """One worker and a split in memory: `run_job` skips the TorchTrainer (no Train run
    directory) and gives the same weights and history as Ray Train does; a streamed job
    still goes to Ray Train."""
    prepared = prepare_dataset(DatasetConfig(rows=3000, seed=6), tmp_path / "data")
    job = TrainJob(
        name="small",
        module_factory=ZooModelFactory("mlp", "income", {"embed_dim": 4, "hidden": [16]}),
        data_dir=str(prepared.path),
        tasks=("income",),
        config=TrainConfig(epochs=2, batch_size=256, patience=None, num_threads=1),
        storage_path=str(tmp_path / "ray"),
        resources=WorkerResources(cpu=0.5),
        data_mode="memory",
    )
    assert trains_in_process(job)
    in_task = run_job(job)
    on_train = run_train_job(job)
    assert in_task.run_path == "" and on_train.run_path
    assert [h["val_auc"] for h in in_task.history] == [h["val_auc"] for h in on_train.history]
    for name, tensor in on_train.state_dict.items():
        assert torch.equal(in_task.state_dict[name], tensor), name
    streamed = replace(job, data_mode="stream")
    assert not trains_in_process(streamed)
    assert not trains_in_process(replace(job, resources=WorkerResources(num_workers=2, cpu=0.5)))
