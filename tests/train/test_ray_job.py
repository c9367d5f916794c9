"""The Ray Train runner on its streaming path: Ray Data shards in, best weights out."""

from __future__ import annotations

from pathlib import Path

import pytest

from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.data.streaming import load_split
from emm_ray.train.loop import TensorBatches, TrainConfig, evaluate
from emm_ray.train.members import ZooModelFactory
from emm_ray.train.ray_job import RESUME_FILE, TrainJob, WorkerResources, run_train_job

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
