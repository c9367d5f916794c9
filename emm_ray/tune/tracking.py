"""One MLflow run per Tune trial, written from the Tune driver.

Trials run on workers that may not reach the tracking store (and SQLite wants one
writer), so the driver logs for them: the sampled options as params when a trial
starts, each reported epoch's metrics with the epoch as step, and how the trial ended:
`emm.outcome` is `completed` (its fused model was saved), `stopped_early` (ASHA cut it)
or `failed` (run status FAILED). Runs are tagged with the search and trial ids, which is
how the best trial's run is found again to attach its model, and how a restored search
reopens the run of a trial it restarts instead of adding another.
"""

from __future__ import annotations

import time
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial
from ray.tune.logger import LoggerCallback

from emm_ray.tracking.store import (
    claim_run,
    ensure_experiment,
    find_runs,
    flatten_params,
    log_params,
    tag,
    tracking_client,
)

TRIAL_KIND = "tune_trial"
MODEL_SAVED = "fused_model_saved"
NODES = "nodes"  # the closing report names the Ray nodes the trial trained on
LOGGED_PREFIXES = ("val_", "train_")


class TrialRuns(LoggerCallback):
    """Tune callback: trial -> MLflow run (created lazily, so the callback stays picklable)."""

    def __init__(self, tracking_uri: str, experiment: str, search_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.search_id = search_id
        self._client: MlflowClient | None = None
        self._experiment_id = ""
        self._runs: dict[str, str] = {}
        self._epochs: dict[str, int] = {}
        self._placed: set[str] = set()  # trials whose node is tagged

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = tracking_client(self.tracking_uri)
            self._experiment_id = ensure_experiment(self._client, self.experiment)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def log_trial_start(self, trial: Trial) -> None:
        if trial.trial_id in self._runs:
            return
        client = self.client
        run_id = claim_run(
            client,
            self._experiment_id,
            {"kind": TRIAL_KIND, "search": self.search_id, "trial_id": trial.trial_id},
            f"trial-{trial.trial_id}",
            reuse_finished=True,  # a restored search may rerun a trial it had not saved
        )
        self._runs[trial.trial_id] = run_id
        log_params(client, run_id, flatten_params("", trial.config))

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        if result.get(MODEL_SAVED):  # the trial's closing report: its best epoch's scores
            metrics = _metrics(result, 0, now, prefix="best_")
        else:
            self._epochs[trial.trial_id] = step = int(result.get("epoch", iteration))
            metrics = _metrics(result, step, now)
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        if result.get(NODES) and trial.trial_id not in self._placed:
            self.client.set_tag(run_id, tag(NODES), result[NODES])
            self._placed.add(trial.trial_id)

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        client = self.client
        completed = bool((trial.last_result or {}).get(MODEL_SAVED))
        outcome = "failed" if failed else "completed" if completed else "stopped_early"
        client.set_tag(run_id, tag("outcome"), outcome)
        client.set_tag(run_id, tag("epochs"), str(self._epochs.get(trial.trial_id, 0)))
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def _metrics(result: dict[str, Any], step: int, now: int, prefix: str = "") -> list[Metric]:
    return [
        Metric(prefix + key, float(value), now, step)
        for key, value in result.items()
        if key.startswith(LOGGED_PREFIXES) and isinstance(value, int | float)
    ]


def trial_run_id(client: MlflowClient, experiment: str, search_id: str, trial_id: str) -> str:
    """The MLflow run `TrialRuns` opened for `trial_id` of search `search_id`."""
    runs = find_runs(
        client,
        ensure_experiment(client, experiment),
        {"kind": TRIAL_KIND, "search": search_id, "trial_id": trial_id},
        status=None,
    )
    if not runs:
        raise LookupError(f"no MLflow run for trial {trial_id} of search {search_id}")
    return runs[0].info.run_id


def close_abandoned_trials(client: MlflowClient, experiment: str, search_id: str) -> None:
    """Mark KILLED the runs of trials an interrupted attempt of the search left RUNNING
    (a restored search gives the trials it never saved new ids, and new runs)."""
    runs = find_runs(
        client,
        ensure_experiment(client, experiment),
        {"kind": TRIAL_KIND, "search": search_id},
        status="RUNNING",
    )
    for run in runs:
        client.set_tag(run.info.run_id, tag("outcome"), "interrupted")
        client.set_terminated(run.info.run_id, "KILLED")
