"""Train the end-to-end baselines on Ray, log each to MLflow, load them back.

Baselines train with the same loop as pool members and the fused model, on the same
prepared data, split and `TrainConfig` rules, so the comparison differs only in the
model. A baseline whose split fits in memory on one worker trains in one Ray task
(`ray_job.run_job`: no Ray Train start-up for seconds of work); others on Ray Train.
Each baseline is one MLflow run tagged with a digest of its spec, the schema hash and
the data fingerprint; a rerun reuses finished runs.

ESMM and AITM have a funnel form (the papers') and a plain one. Unless the config sets
`funnel`, the training split's labels choose: the funnel form only when they are nested
(each task's positives within the previous task's), so a non-funnel task mix such as
census's does not make strawmen of them. The chosen value is part of the run's
hyperparameters, so it is digested, logged and saved with the model.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import torch
from mlflow.tracking import MlflowClient
from pydantic import Field, model_validator

from emm_ray import storage
from emm_ray.baselines import BASELINES, MultiTaskBaseline, build_baseline, labels_are_nested
from emm_ray.baselines.common import parse_hyperparameters
from emm_ray.config import StrictModel
from emm_ray.data.prepare import PreparedDataset
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ArtifactIntegrityError, ConfigError, EmmError
from emm_ray.tracking.artifacts import ArtifactManifest, load_module_artifact, save_module_artifact
from emm_ray.tracking.store import (
    claim_run,
    download_run_directory,
    ensure_experiment,
    find_runs,
    flatten_params,
    log_history,
    log_metrics,
    log_params,
    spec_digest,
    tag,
    tag_nodes,
    tag_resumed,
    tracking_client,
)
from emm_ray.train.loop import TrainConfig
from emm_ray.train.ray_job import (
    DataMode,
    TrainJob,
    TrainOutcome,
    WorkerResources,
    run_job,
)

logger = logging.getLogger(__name__)

BASELINE_KIND = "baseline"
MODEL_ARTIFACT_PATH = "model"
FUNNEL = "funnel"


class BaselineSpec(StrictModel):
    """Which baselines to train and how: the `baselines:` section of a run config.

    `hparams` maps a baseline name to its hyperparameters (defaults otherwise); `tasks`
    defaults to all of the dataset's tasks. `train` should match the pool's and the
    fusion's epoch budget for a fair comparison. ESMM's and AITM's `funnel`, when not
    given, follows the training labels (see `train_labels_nested`).
    """

    experiment: str = "emm-baselines"
    names: tuple[str, ...] = ("shared_bottom", "mmoe", "ple", "esmm", "aitm")
    hparams: dict[str, dict[str, Any]] = {}
    tasks: tuple[str, ...] | None = None
    train: TrainConfig = TrainConfig(epochs=10, lr=2e-3, patience=2)
    resources: WorkerResources = WorkerResources()
    data_mode: DataMode = "auto"
    max_concurrent: int = Field(
        2, ge=1, description="baselines training at once (half-CPU workers: 2 fit a 2-CPU node)"
    )

    @model_validator(mode="after")
    def _known_baselines(self) -> BaselineSpec:
        unknown = [n for n in [*self.names, *self.hparams] if n not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
        for name, values in self.hparams.items():
            try:
                parse_hyperparameters(name, BASELINES[name].Hyperparameters, values)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    def unset_funnel(self) -> list[str]:
        """Baselines of `names` that have a funnel form but no `funnel` in `hparams`."""
        return [
            name
            for name in self.names
            if FUNNEL in BASELINES[name].Hyperparameters.model_fields
            and FUNNEL not in self.hparams.get(name, {})
        ]

    def full_hparams(self, name: str, *, nested_labels: bool | None = None) -> dict[str, Any]:
        """`name`'s hyperparameters with defaults filled in (what gets built).

        `nested_labels` (from `train_labels_nested`) sets `funnel` where a baseline has
        one and `hparams` leaves it unset; without it the default (funnel form) stays.
        """
        kind = BASELINES[name].Hyperparameters
        values = dict(self.hparams.get(name, {}))
        if nested_labels is not None and FUNNEL in kind.model_fields:
            values.setdefault(FUNNEL, nested_labels)
        return parse_hyperparameters(name, kind, values).model_dump(mode="json")


def train_labels_nested(prepared: PreparedDataset, tasks: Sequence[str]) -> bool:
    """Whether the training split's labels of `tasks`, in that order, are nested.

    Reads only those label columns, one parquet batch at a time, and stops at the first
    batch with a row that is not nested.
    """
    shards = ds.dataset(prepared.split_dir("train"), format="parquet")
    for batch in shards.to_batches(columns=list(tasks)):
        labels = np.stack([batch.column(t).to_numpy(zero_copy_only=False) for t in tasks], axis=1)
        if not labels_are_nested(torch.from_numpy(labels)):
            return False
    return True


@dataclass(frozen=True)
class BaselineFactory:
    """Picklable `schema -> baseline` recipe, built inside the Ray Train worker."""

    name: str
    tasks: tuple[str, ...]
    hparams: dict[str, Any]

    def __call__(self, schema: FeatureSchema) -> MultiTaskBaseline:
        return build_baseline(self.name, schema, self.tasks, **self.hparams)


@dataclass
class BaselineRun:
    """A baseline's MLflow run and its best validation AUC; `status` says if it was reused."""

    name: str
    run_id: str
    status: str
    val_auc: float | None
    wall_seconds: float | None = None


def train_baselines(
    spec: BaselineSpec,
    prepared: PreparedDataset | str | Path,
    *,
    storage_path: str | Path,
    tracking_uri: str | None = None,
    force: bool = False,
) -> list[BaselineRun]:
    """Train (or reuse) every baseline of `spec` on `prepared`, one Ray job each
    (`run_job`), `spec.max_concurrent` at once.

    Jobs are driven from driver threads (each mostly waits on Ray); MLflow is written
    from this thread only. The first failure is raised after the baselines
    already running have finished and been logged, so no finished training is lost.
    """
    prepared = prepared if isinstance(prepared, PreparedDataset) else PreparedDataset.load(prepared)
    schema = prepared.schema
    tasks = tuple(spec.tasks) if spec.tasks is not None else tuple(schema.task_names)
    client = tracking_client(tracking_uri)
    experiment_id = ensure_experiment(client, spec.experiment)
    fingerprint = str(prepared.split_info["config_hash"])
    results: dict[str, BaselineRun] = {}
    pending: list[_Pending] = []
    nested: bool | None = None
    if unset := spec.unset_funnel():
        nested = train_labels_nested(prepared, tasks)
        logger.info(
            "%s: funnel=%s, as the training labels of %s are %s",
            ", ".join(unset),
            nested,
            ", ".join(tasks),
            "nested (each task's positives within the previous task's)"
            if nested
            else "not nested (set hparams.<name>.funnel to override)",
        )
    for name in spec.names:
        hparams = spec.full_hparams(name, nested_labels=nested)
        build_baseline(name, schema, tasks, **hparams)
        lookup = {
            "kind": BASELINE_KIND,
            "baseline": name,
            "spec_digest": spec_digest(
                {"tasks": tasks, "hparams": hparams, "train": spec.train.model_dump(mode="json")}
            ),
            "schema_hash": schema.hash,
            "data_fingerprint": fingerprint,
        }
        finished = [] if force else find_runs(client, experiment_id, lookup)
        if finished:
            run = finished[0]
            logger.info(
                "%s: already trained for this data and spec (run %s)", name, run.info.run_id
            )
            results[name] = BaselineRun(
                name, run.info.run_id, "skipped", run.data.metrics.get("best_val_auc")
            )
            continue
        pending.append(_Pending(name, hparams, lookup))

    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=spec.max_concurrent, thread_name_prefix="baseline") as ex:
        running: dict[Future[TrainOutcome], tuple[_Pending, str]] = {}
        for item in pending:
            run_id = _start_run(client, experiment_id, spec, item, tasks, reopen=not force)
            job = TrainJob(
                name=f"baseline-{item.name}",
                module_factory=BaselineFactory(item.name, tasks, item.hparams),
                data_dir=prepared.location,
                tasks=tasks,
                config=spec.train,
                storage_path=storage.resolve(storage_path),
                run_key=run_id,
                resources=spec.resources,
                data_mode=spec.data_mode,
            )
            running[ex.submit(run_job, job)] = (item, run_id)
        for future in as_completed(running):
            item, run_id = running[future]
            try:
                results[item.name] = _finish_run(
                    client, run_id, spec, prepared, item, tasks, future.result()
                )
            except BaseException as exc:  # noqa: BLE001 - logged, raised after the others
                client.set_tag(run_id, tag("error"), f"{type(exc).__name__}: {exc}"[:5000])
                client.set_terminated(run_id, "FAILED")
                logger.error("%s: failed: %s", item.name, exc)
                failure = failure or exc
    if failure is not None:
        raise failure
    return [results[name] for name in spec.names]


@dataclass(frozen=True)
class _Pending:
    """A baseline to train: its name, full hyperparameters and MLflow lookup tags."""

    name: str
    hparams: dict[str, Any]
    lookup: dict[str, str]


def _start_run(
    client: MlflowClient,
    experiment_id: str,
    spec: BaselineSpec,
    item: _Pending,
    tasks: tuple[str, ...],
    reopen: bool,
) -> str:
    run_id = claim_run(client, experiment_id, item.lookup, item.name, reopen=reopen)
    log_params(
        client,
        run_id,
        {
            "baseline": item.name,
            "tasks": ",".join(tasks),
            **flatten_params("hparam", item.hparams),
            **flatten_params("train", spec.train.model_dump(mode="json")),
        },
    )
    return run_id


def _finish_run(
    client: MlflowClient,
    run_id: str,
    spec: BaselineSpec,
    prepared: PreparedDataset,
    item: _Pending,
    tasks: tuple[str, ...],
    outcome: TrainOutcome,
) -> BaselineRun:
    """Log a trained baseline's history, metrics and model artifact; end its run."""
    now = int(time.time() * 1000)
    log_history(client, run_id, outcome.history, now)
    model = BaselineFactory(item.name, tasks, item.hparams)(prepared.schema)
    log_metrics(
        client,
        run_id,
        {
            **{f"best_{k}": v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
            "best_epoch": float(outcome.best_epoch),
            "wall_seconds": outcome.wall_seconds,
            "trainable_parameters": float(sum(p.numel() for p in model.parameters())),
        },
        now,
    )
    manifest = ArtifactManifest(
        kind=BASELINE_KIND,
        name=item.name,
        architecture=item.name,
        tasks=tasks,
        hparams=item.hparams,
        schema_hash=prepared.schema.hash,
        data_fingerprint=item.lookup["data_fingerprint"],
        metrics={k: v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
        extra={"run_id": run_id, "best_epoch": outcome.best_epoch},
    )
    with tempfile.TemporaryDirectory() as directory:
        save_module_artifact(directory, outcome.state_dict, manifest, prepared.schema)
        client.log_artifacts(run_id, directory, MODEL_ARTIFACT_PATH)
    tag_resumed(client, run_id, outcome.resumed_after_epoch)
    tag_nodes(client, run_id, outcome.nodes)
    client.set_terminated(run_id, "FINISHED")
    logger.info("%s: val AUC %.4f in %.1f s", item.name, outcome.best_score, outcome.wall_seconds)
    return BaselineRun(item.name, run_id, "trained", outcome.best_score, outcome.wall_seconds)


def find_baselines(
    client: MlflowClient,
    experiment: str,
    schema_hash: str,
    data_fingerprint: str,
    names: Sequence[str] | None = None,
) -> dict[str, str]:
    """Baseline name -> newest finished run trained on this data (optionally only `names`)."""
    experiment_id = ensure_experiment(client, experiment)
    runs = find_runs(
        client,
        experiment_id,
        {"kind": BASELINE_KIND, "schema_hash": schema_hash, "data_fingerprint": data_fingerprint},
    )
    newest: dict[str, str] = {}
    for run in runs:
        newest.setdefault(run.data.tags[tag("baseline")], run.info.run_id)
    if names is not None:
        missing = [n for n in names if n not in newest]
        if missing:
            raise EmmError(
                f"no trained baseline {missing} in experiment {experiment!r} for this data; "
                "train them first (pipelines/evaluate.py trains missing baselines)"
            )
        return {n: newest[n] for n in names}
    return newest


def load_baseline(
    client: MlflowClient, run_id: str, schema: FeatureSchema | None = None
) -> MultiTaskBaseline:
    """Download, verify and rebuild the baseline logged in `run_id` (eval mode)."""
    with tempfile.TemporaryDirectory() as directory:
        local = download_run_directory(client, run_id, MODEL_ARTIFACT_PATH, directory)
        artifact = load_module_artifact(local, expected_schema=schema)
    manifest = artifact.manifest
    if manifest.kind != BASELINE_KIND:
        raise EmmError(f"run {run_id} holds a {manifest.kind!r} artifact, not a baseline")
    model = build_baseline(
        manifest.architecture, artifact.schema, manifest.tasks, **manifest.hparams
    )
    try:
        model.load_state_dict(artifact.state_dict, strict=True)
    except RuntimeError as exc:
        raise ArtifactIntegrityError(
            f"run {run_id}: weights do not fit baseline {manifest.architecture}: {exc}"
        ) from exc
    return model.eval()
