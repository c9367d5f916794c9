"""A tiny pool trained in-process and logged exactly as `train_pool` logs its members.

Tune tests need trained members in MLflow, not Ray Train's start-up cost for each of
them: the generic loop trains them here and `emm_ray.train.members` records them.
"""

from __future__ import annotations

from typing import Any

from emm_ray.data.prepare import PreparedDataset
from emm_ray.data.streaming import load_split
from emm_ray.models.registry import build_model
from emm_ray.tracking.store import ensure_experiment, tracking_client
from emm_ray.train.loop import TensorBatches, TrainConfig, fit, seed_everything
from emm_ray.train.members import MemberIdentity, finish_member_run, start_member_run
from emm_ray.train.ray_job import TrainOutcome

MEMBERS: list[tuple[str, str, dict[str, Any]]] = [
    ("mlp_income", "income", {"embed_dim": 4, "hidden": (16, 8)}),
    ("mlp_income_narrow", "income", {"embed_dim": 4, "hidden": (8, 8)}),
    ("mlp_married", "never_married", {"embed_dim": 4, "hidden": (16, 8)}),
]


def log_tiny_pool(prepared: PreparedDataset, tracking_uri: str) -> dict[str, str]:
    """Train `MEMBERS` for 2 epochs and log each as a finished pool-member run."""
    schema = prepared.schema
    train = TensorBatches(load_split(prepared.path, "train"), 512, shuffle=True)
    validation = TensorBatches(load_split(prepared.path, "validation"), 4096)
    config = TrainConfig(epochs=2, batch_size=512, patience=None)
    client = tracking_client(tracking_uri)
    experiment_id = ensure_experiment(client, "emm-pool")
    runs = {}
    for name, task, hparams in MEMBERS:
        seed_everything(0)
        model = build_model("mlp", schema, task, **hparams)
        result = fit(model, train, validation, [schema.task_index(task)], config, task_names=[task])
        identity = MemberIdentity(
            pool="tiny",
            name=name,
            architecture="mlp",
            task=task,
            hparams=model.hparams,
            train=config,
            schema_hash=schema.hash,
            data_fingerprint=str(prepared.split_info["config_hash"]),
        )
        run_id = start_member_run(client, experiment_id, identity, {"cpu": 1})
        outcome = TrainOutcome(
            name=name,
            state_dict=result.best_state,
            history=result.history,
            best_epoch=result.best_epoch,
            best_metrics=result.best_metrics,
            stopped_early=result.stopped_early,
            device="cpu",
            wall_seconds=sum(h["train_seconds"] for h in result.history),
            run_path="",
        )
        finish_member_run(client, run_id, identity, outcome, schema)
        runs[name] = run_id
    return runs
