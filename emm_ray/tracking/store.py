"""Where runs are recorded: MLflow client set-up, experiments, run look-ups by tag.

The default store is a SQLite database `mlruns.db` in the current directory with
artifacts in `mlartifacts/` beside it, so a single machine needs no server;
`MLFLOW_TRACKING_URI` (or an explicit URI) points every stage at a shared server instead.
Only the driver talks to MLflow: Ray workers return their results, which keeps SQLite
free of concurrent writers and lets workers on other nodes run without store access.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow.entities import Metric, Param, Run
from mlflow.tracking import MlflowClient

DEFAULT_DATABASE = "mlruns.db"
ARTIFACT_FOLDER = "mlartifacts"
TAG_PREFIX = "emm."
MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlruns.db` (absolute)."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DATABASE}"


def tracking_client(uri: str | None = None) -> MlflowClient:
    """A client bound to one store; passing it around avoids MLflow's global active run."""
    resolved = resolve_tracking_uri(uri)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it (artifacts beside a SQLite database) if missing."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(client))


def _artifact_location(client: MlflowClient) -> str | None:
    """`file://<db folder>/mlartifacts` for SQLite stores; the server's default otherwise."""
    parsed = urlparse(client.tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    database = Path(unquote(parsed.path))
    return (database.parent / ARTIFACT_FOLDER).resolve().as_uri()


def spec_digest(payload: Mapping[str, Any]) -> str:
    """Short stable hash of a JSON-able spec: the key a rerun uses to recognise finished work."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def tag(name: str) -> str:
    """The namespaced MLflow tag key emm-ray uses for `name`."""
    return TAG_PREFIX + name


def find_runs(
    client: MlflowClient,
    experiment_id: str,
    tags: Mapping[str, str],
    status: str | None = "FINISHED",
) -> list[Run]:
    """Runs whose emm tags all equal `tags` (and with `status`), newest first."""
    clauses = [f"tags.`{tag(k)}` = {_literal(v)}" for k, v in tags.items()]
    if status is not None:
        clauses.append(f"attributes.status = '{status}'")
    return client.search_runs(
        [experiment_id],
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
    )


INTERRUPTED = ("RUNNING", "KILLED")
ATTEMPT_TAGS = ("error", "resumed_after_epoch", "notes")


def claim_run(
    client: MlflowClient,
    experiment_id: str,
    lookup: Mapping[str, str],
    run_name: str,
    *,
    extra_tags: Mapping[str, str] | None = None,
    reopen: bool = True,
    reuse_finished: bool = False,
) -> str:
    """Open (RUNNING) the run that records the work `lookup` identifies.

    A run an interrupted attempt left behind (RUNNING or KILLED, same lookup tags) is
    reopened instead of adding another, so a rerun after a killed driver leaves one run
    per piece of work, and its training resumes from the checkpoints stored under the
    run's id (`TrainJob.run_key`). A FAILED run stays the record of a failure: the
    retry gets a new run, so it never resumes the failed attempt's state. `reopen=False`
    (`--force`) always starts a new run; `reuse_finished` also reopens a FINISHED one
    (work that is redone rather than skipped, such as an evaluation). The tags one
    attempt sets (`ATTEMPT_TAGS`) are cleared on reopening. `extra_tags` (emm names,
    like `lookup`) describe the run without identifying it.

    Two drivers running the same work at the same time would share the run: emm-ray
    assumes one driver per store and work at a time.
    """
    wanted = (*INTERRUPTED, "FINISHED") if reuse_finished else INTERRUPTED
    for run in find_runs(client, experiment_id, lookup, status=None) if reopen else []:
        if run.info.status in wanted:
            run_id = run.info.run_id
            client.update_run(run_id, status="RUNNING")
            for name in ATTEMPT_TAGS:
                if tag(name) in run.data.tags:
                    client.delete_tag(run_id, tag(name))
            return run_id
    tags = {tag(k): v for k, v in {**(extra_tags or {}), **lookup}.items()}
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def tag_resumed(client: MlflowClient, run_id: str, resumed_after_epoch: int) -> None:
    """Record on the run that its training went on from a checkpoint after a process or
    the driver died (`emm.resumed_after_epoch`), so a reader knows it was interrupted."""
    if resumed_after_epoch > 0:
        client.set_tag(run_id, tag("resumed_after_epoch"), str(resumed_after_epoch))


def tag_nodes(client: MlflowClient, run_id: str, nodes: tuple[str, ...]) -> None:
    """Record the Ray node each training worker ran on (`emm.nodes`, by rank), so where
    a run was placed on a cluster can be read back."""
    if nodes:
        client.set_tag(run_id, tag("nodes"), ",".join(nodes))


def _literal(value: str) -> str:
    """A filter-string literal: MLflow has no escapes, so pick a quote the value lacks."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"tag value {value!r} holds both quote characters; MLflow cannot search it")


def flatten_params(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    """Nested config -> `prefix.key.sub` string params (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(name, value))
        else:
            flat[name] = json.dumps(value, default=str)[:MAX_PARAM_LENGTH]
    return flat


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log `params`, skipping those a reopened run (`claim_run`) already holds: MLflow
    refuses to change a logged param, and the run's first values stay the record."""
    logged = client.get_run(run_id).data.params
    items = [Param(k, v) for k, v in params.items() if k not in logged]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_history(
    client: MlflowClient, run_id: str, history: Sequence[Mapping[str, float]], timestamp_ms: int
) -> None:
    """Per-epoch metrics with the epoch as MLflow step."""
    metrics = [
        Metric(key, float(value), timestamp_ms, int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key != "epoch"
    ]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], ts: int) -> None:
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])


def download_run_directory(
    client: MlflowClient, run_id: str, artifact_path: str, destination: str | Path | None = None
) -> Path:
    """Copy a run's artifact folder to local disk (a temp dir by default) and return its path."""
    target = Path(destination) if destination else Path(tempfile.mkdtemp(prefix="emm-artifact-"))
    return Path(client.download_artifacts(run_id, artifact_path, str(target)))
