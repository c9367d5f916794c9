"""One Tune trial: train a fused model over the frozen pool, save it.

Fusion itself is `emm_ray.fusion`'s: its `FusedModelFactory` builds the model inside the
Train worker, `verify_frozen` checks the pool came out bit-identical, and
`save_fused_model` writes the one self-describing artifact that gets registered.

A trial whose split fits in memory on one worker trains in the trial's own process
(`ray_job.fit_in_process`) and reports every epoch to Tune itself: a TorchTrainer's
start-up would cost more than the trial's few epochs. Larger trials run a Ray Train
job (Train v2 refuses to be a Tune trainable itself) whose per-epoch reports reach Tune
through `TuneReportCallback`. Either way ASHA sees every epoch's mean validation AUC
and can stop the trial between epochs.
When training ends, the trial saves its fused model as an artifact and reports it as
its checkpoint, in one last report marked `fused_model_saved`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emm_ray.data.streaming import load_schema
from emm_ray.fusion.artifact import save_fused_model
from emm_ray.fusion.config import FusionConfig
from emm_ray.fusion.stage import FusedModelFactory, MemberWeights, verify_frozen
from emm_ray.runtime import current_node
from emm_ray.tracking.store import tracking_client
from emm_ray.train.loop import EpochEnd, TrainConfig
from emm_ray.train.members import load_member
from emm_ray.train.ray_job import (
    TrainJob,
    WorkerResources,
    fit_in_process,
    is_small_job,
    run_train_job,
    trains_in_process,
)
from emm_ray.tune.space import FUSION_OPTIONS, TrialSettings
from emm_ray.tune.tracking import MODEL_SAVED, NODES

METRIC = "val_auc"
TRAIN_OPTIONS = ("lr", "weight_decay")


@dataclass(frozen=True)
class SearchContext:
    """What every trial shares: the data, the frozen pool, the fixed training settings."""

    data_dir: str
    pool: tuple[MemberWeights, ...]
    trial: TrialSettings
    epochs: int
    storage_path: str


def load_pool(
    pool_runs: Mapping[str, str], data_dir: str | Path, tracking_uri: str
) -> tuple[MemberWeights, ...]:
    """Load and verify the pool members once, on the driver (trials get them by value)."""
    schema = load_schema(data_dir)
    client = tracking_client(tracking_uri)
    loaded = [load_member(run_id, schema=schema, client=client) for run_id in pool_runs.values()]
    return tuple(MemberWeights.from_manifest(m.manifest, m.model.state_dict()) for m in loaded)


def select_members(
    pool: tuple[MemberWeights, ...], experts_per_task: int | None
) -> tuple[MemberWeights, ...]:
    """The best `experts_per_task` members of each task by validation AUC (all if `None`)."""
    if experts_per_task is None:
        return pool
    chosen: set[str] = set()
    for task in {m.task for m in pool}:
        ranked = sorted((m for m in pool if m.task == task), key=_member_auc, reverse=True)
        chosen.update(m.name for m in ranked[:experts_per_task])
    return tuple(m for m in pool if m.name in chosen)


def _member_auc(member: MemberWeights) -> float:
    return float(member.manifest.get("metrics", {}).get(METRIC, float("-inf")))


def trial_resources(context: SearchContext) -> dict[str, float]:
    """What Tune reserves for one trial: its worker's CPUs when it trains in its own
    process, a token share when it only drives a Ray Train job (whose workers reserve
    their own; Tune refuses 0)."""
    resources = WorkerResources(
        num_workers=context.trial.num_workers, cpu=context.trial.cpus_per_worker
    )
    if is_small_job(resources, context.data_dir, "auto"):
        return {"CPU": resources.cpu}
    return {"CPU": 0.01}


def fusion_trial(config: dict[str, Any], context: SearchContext) -> None:
    """Tune function: fuse with the sampled options, report per epoch, then save the model."""
    from ray import tune

    fusion = FusionConfig(**{k: v for k, v in config.items() if k in FUSION_OPTIONS})
    train = TrainConfig(
        epochs=context.epochs,
        batch_size=context.trial.batch_size,
        patience=context.trial.patience,
        seed=context.trial.seed,
        **{k: v for k, v in config.items() if k in TRAIN_OPTIONS},
    )
    members = select_members(context.pool, config.get("experts_per_task"))
    schema = load_schema(context.data_dir)
    factory = FusedModelFactory(members, fusion)
    model = factory(schema)
    job = TrainJob(
        name=f"trial-{tune.get_context().get_trial_id()}",
        module_factory=factory,
        data_dir=context.data_dir,
        tasks=tuple(model.task_names),
        config=train,
        storage_path=context.storage_path,
        resources=WorkerResources(
            num_workers=context.trial.num_workers, cpu=context.trial.cpus_per_worker
        ),
    )
    if trains_in_process(job):  # seconds of work: no Ray Train start-up inside the trial
        node = current_node()

        def report(end: EpochEnd) -> None:
            tune.report({**end.metrics, "best_epoch": end.state.best_epoch, NODES: node})

        outcome = fit_in_process(job, on_epoch=report)
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        outcome = run_train_job(job, callbacks=[TuneReportCallback()])
    model.load_state_dict(outcome.state_dict, strict=True)
    verify_frozen(model, factory, schema)
    with tempfile.TemporaryDirectory() as directory:
        save_fused_model(
            model,
            directory,
            job.name,
            metrics={k: v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
            extra={"best_epoch": outcome.best_epoch, "trial_options": dict(config)},
        )
        tune.report(
            {
                **outcome.best_metrics,
                "best_epoch": outcome.best_epoch,
                "epochs_run": len(outcome.history),
                NODES: ",".join(outcome.nodes),
                MODEL_SAVED: True,
            },
            checkpoint=tune.Checkpoint.from_directory(directory),
        )
