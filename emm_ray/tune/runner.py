"""Search the fusion architecture over a frozen pool with Ray Tune, register the best model.

`run_search(spec, ...)`: one Tune trial per sampled configuration, each training a fused
model on Ray Train (see `trial`), at most `spec.max_concurrent` at once, ASHA stopping
the weak ones after `grace_period` epochs. Every trial is an MLflow run (`TrialRuns`);
the completed trial with the best mean validation AUC gets its fused model artifact
attached to its run and registered in the MLflow Model Registry, tagged with its
metrics and options. The pool itself is never trained: it enters every trial frozen.

A search is identified by a digest of the spec, the pool's runs and the data; the
registered version carries it, so rerunning the same search returns that version
instead of searching again (`force=True` searches anyway). The digest also names the
Tune experiment, so a search whose driver died is restored (`Tuner.restore`, which
unpickles Tune's own experiment state: the storage path must be one only emm-ray
writes) and finishes only its unfinished trials.
"""

from __future__ import annotations

import ast
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import Result
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from emm_ray import storage
from emm_ray.data.prepare import PreparedDataset
from emm_ray.errors import EmmError
from emm_ray.tracking.store import resolve_tracking_uri, spec_digest, tag, tracking_client
from emm_ray.tune.registry import METRIC_TAG, register_artifact
from emm_ray.tune.space import TuneSpec
from emm_ray.tune.tracking import MODEL_SAVED, TrialRuns, close_abandoned_trials, trial_run_id
from emm_ray.tune.trial import METRIC, SearchContext, fusion_trial, load_pool, trial_resources

logger = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
OPTION_TAG = "option."


@dataclass(frozen=True)
class TrialSummary:
    """How one trial ended, for the pipeline's report."""

    trial_id: str
    config: dict[str, Any]
    val_auc: float | None
    epochs: int
    outcome: str


@dataclass(frozen=True)
class SearchOutcome:
    """The registered best model and what the search saw (no trials when `skipped`)."""

    model_name: str
    version: str
    run_id: str
    best_config: dict[str, Any]
    best_metrics: dict[str, float]
    status: Literal["searched", "skipped"]
    trials: list[TrialSummary] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


def run_search(
    spec: TuneSpec,
    *,
    data_dir: str | Path,
    pool_runs: Mapping[str, str],
    model_name: str,
    storage_path: str | Path,
    tracking_uri: str | None = None,
    experiment: str = "emm-tune",
    alias: str | None = "champion",
    force: bool = False,
) -> SearchOutcome:
    """Run the search on the connected Ray cluster and register its best fused model.

    `pool_runs` maps pool member names to the MLflow runs holding their weights (as
    `train_pool` reports them); `data_dir` is the prepared dataset they were trained on.
    """
    started = time.perf_counter()
    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = tracking_client(tracking_uri)
    prepared = PreparedDataset.load(data_dir)
    digest = spec_digest(
        {
            "spec": spec.model_dump(mode="json"),
            "pool": dict(sorted(pool_runs.items())),
            "data": prepared.split_info["config_hash"],
            # a restored search logs through the callback it was pickled with: a search
            # recorded in another store or experiment is another search
            "tracking": [tracking_uri, experiment],
        }
    )
    previous = None if force else _registered_search(client, model_name, digest)
    if previous is not None:
        logger.info("search %s already registered as %s/%s", digest, model_name, previous.version)
        return _outcome_from_registry(previous)

    # A search that was interrupted (driver killed) is restored from Tune's experiment
    # state and finishes its unfinished trials; --force starts a new one.
    search_id = uuid.uuid4().hex[:8] if force else digest[:8]
    context = SearchContext(
        data_dir=prepared.location,
        pool=load_pool(pool_runs, prepared.path, tracking_uri),
        trial=spec.trial,
        epochs=spec.asha.max_t,
        storage_path=storage.join(storage.resolve(storage_path), "trials"),
    )
    trainable = tune.with_resources(
        tune.with_parameters(fusion_trial, context=context), trial_resources(context)
    )
    experiment_name = f"tune-{search_id}"
    experiment_dir = storage.join(storage.resolve(storage_path), experiment_name)
    if tune.Tuner.can_restore(experiment_dir):
        logger.info("search %s was interrupted; restoring it from %s", search_id, experiment_dir)
        tuner = tune.Tuner.restore(
            experiment_dir,
            trainable,
            resume_errored=True,
            param_space=spec.search.param_space(),
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=spec.search.param_space(),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                num_samples=spec.num_samples,
                search_alg=BasicVariantGenerator(
                    random_state=spec.trial.seed, max_concurrent=spec.max_concurrent
                ),
                scheduler=ASHAScheduler(
                    time_attr="training_iteration",
                    # +1: a trial's last report (its saved model) comes after its last epoch
                    max_t=spec.asha.max_t + 1,
                    grace_period=spec.asha.grace_period,
                    reduction_factor=spec.asha.reduction_factor,
                ),
            ),
            run_config=tune.RunConfig(
                name=experiment_name,
                storage_path=storage.resolve(storage_path),
                callbacks=[TrialRuns(tracking_uri, experiment, search_id)],
                verbose=0,  # trials print their epochs (emm_ray.progress); Tune's table is wide
            ),
        )
    results = list(tuner.fit())
    close_abandoned_trials(client, experiment, search_id)
    completed = [r for r in results if r.error is None and r.metrics.get(MODEL_SAVED)]
    if not completed:
        errors = "; ".join(str(r.error) for r in results if r.error is not None)
        raise EmmError(f"no trial of search {search_id} completed: {errors or 'all stopped'}")
    best = max(completed, key=lambda r: r.metrics[METRIC])

    run_id = trial_run_id(client, experiment, search_id, best.metrics["trial_id"])
    assert best.checkpoint is not None
    with best.checkpoint.as_directory() as directory:
        client.log_artifacts(run_id, directory, MODEL_ARTIFACT_PATH)
    metrics = {k: float(v) for k, v in best.metrics.items() if k.startswith("val_")}
    version = register_artifact(
        client,
        model_name,
        run_id,
        MODEL_ARTIFACT_PATH,
        metrics=metrics,
        tags={
            tag("search"): search_id,
            tag("search_digest"): digest,
            **{OPTION_TAG + k: repr(v) for k, v in best.config.items()},
        },
        description=f"best of {len(results)} Tune trials (search {search_id}) over a frozen pool",
        alias=alias,
    )
    client.set_tag(run_id, tag("registered"), f"{model_name}/{version.version}")
    logger.info(
        "registered %s version %s (val AUC %.4f)", model_name, version.version, metrics[METRIC]
    )
    return SearchOutcome(
        model_name=model_name,
        version=str(version.version),
        run_id=run_id,
        best_config=dict(best.config),
        best_metrics=metrics,
        status="searched",
        trials=[_summary(r) for r in results],
        wall_seconds=time.perf_counter() - started,
    )


def _registered_search(client: MlflowClient, model_name: str, digest: str) -> ModelVersion | None:
    """The newest version of `model_name` registered by the search with this digest."""
    versions = client.search_model_versions(
        f"name = '{model_name}' and tags.`{tag('search_digest')}` = '{digest}'"
    )
    return max(versions, key=lambda v: int(v.version), default=None)


def _outcome_from_registry(version: ModelVersion) -> SearchOutcome:
    return SearchOutcome(
        model_name=version.name,
        version=str(version.version),
        run_id=str(version.run_id),
        best_config={
            k.removeprefix(OPTION_TAG): ast.literal_eval(v)
            for k, v in version.tags.items()
            if k.startswith(OPTION_TAG)
        },
        best_metrics={
            k.removeprefix(METRIC_TAG): float(v)
            for k, v in version.tags.items()
            if k.startswith(METRIC_TAG)
        },
        status="skipped",
    )


def _summary(result: Result) -> TrialSummary:
    metrics = result.metrics or {}
    saved = metrics.get(MODEL_SAVED)
    return TrialSummary(
        trial_id=str(metrics.get("trial_id", "")),
        config=dict(result.config or {}),
        val_auc=metrics.get(METRIC),
        epochs=int(metrics.get("epochs_run", metrics.get("epoch", 0))),
        outcome="failed" if result.error else "completed" if saved else "stopped_early",
    )
