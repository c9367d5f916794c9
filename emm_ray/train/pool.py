"""Train a pool of single-task models on one Ray cluster, several at once.

Every member is its own Ray Train run (`run_train_job`). The driver launches them from
threads — a `TorchTrainer.fit()` spends its time waiting on its controller actor, so a
thread is all it needs — admitting members while their requested CPUs/GPUs fit the
cluster, so a pool larger than the cluster queues instead of waiting inside Ray Train
for resources. Fractional GPUs let several members share one device.

A member's failure is caught, recorded (its MLflow run ends FAILED with the error) and
reported at the end; the others go on and are logged as they finish, so nothing
trained is lost. Members already trained on the same data with the same spec (a
FINISHED MLflow run with the same member name, spec digest, schema hash and data
fingerprint) are skipped, which makes a rerun resume the pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from emm_ray import storage
from emm_ray.data.prepare import PreparedDataset
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError
from emm_ray.tracking.store import ensure_experiment, tracking_client
from emm_ray.train.members import (
    MemberIdentity,
    ZooModelFactory,
    fail_member_run,
    find_finished_member,
    finish_member_run,
    start_member_run,
)
from emm_ray.train.pool_spec import MemberSpec, PoolSpec
from emm_ray.train.ray_job import (
    TrainJob,
    TrainOutcome,
    WorkerResources,
    cluster_gpus,
    fit_resources,
    run_train_job,
)

logger = logging.getLogger(__name__)


@dataclass
class MemberResult:
    """How one member ended: trained now, skipped (already trained), or failed."""

    name: str
    architecture: str
    task: str
    status: Literal["trained", "skipped", "failed"]
    run_id: str | None = None
    val_auc: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    wall_seconds: float | None = None
    samples_per_s: float | None = None
    device: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PoolReport:
    """Per-member results of one `train_pool` call."""

    pool: str
    experiment: str
    members: list[MemberResult]
    wall_seconds: float

    @property
    def failed(self) -> list[MemberResult]:
        return [m for m in self.members if m.status == "failed"]

    def run_ids(self) -> dict[str, str]:
        """Member name -> MLflow run id of its trained weights (trained or skipped members)."""
        return {m.name: m.run_id for m in self.members if m.run_id and m.status != "failed"}

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A Markdown table, one row per member."""
        lines = [
            "| member | architecture | task | status | val AUC | best epoch | epochs | "
            "wall s | samples/s | run |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for m in self.members:
            lines.append(
                f"| {m.name} | {m.architecture} | {m.task} | {m.status} | {_fmt(m.val_auc, 4)} | "
                f"{_fmt(m.best_epoch)} | {_fmt(m.epochs_run)} | {_fmt(m.wall_seconds, 1)} | "
                f"{_fmt(m.samples_per_s, 0)} | {m.run_id or ''} |"
            )
        for m in self.members:
            lines.extend(f"\n- {m.name}: {note}" for note in m.notes)
            if m.error:
                lines.append(f"\n- {m.name} FAILED: {m.error}")
        return "\n".join(lines)


def _fmt(value: float | int | None, digits: int | None = None) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if digits is not None else str(value)


def train_pool(
    spec: PoolSpec,
    prepared: PreparedDataset | str | Path,
    *,
    storage_path: str | Path,
    tracking_uri: str | None = None,
    max_concurrent: int | None = None,
    only: Sequence[str] | None = None,
    force: bool = False,
) -> PoolReport:
    """Train `spec`'s members (or the `only` ones) on the connected Ray cluster.

    Validates tasks against the data's schema before anything runs; never raises for a
    member's failure (see `PoolReport.failed`). `force` retrains members already trained.
    """
    import ray

    if not ray.is_initialized():
        raise ConfigError("Ray is not initialised: call emm_ray.runtime.init_ray() first")
    started = time.perf_counter()
    prepared = prepared if isinstance(prepared, PreparedDataset) else PreparedDataset.load(prepared)
    schema = prepared.schema
    spec.check_tasks(schema)
    members = [spec.member(name) for name in only] if only else list(spec.members)
    fingerprint = str(prepared.split_info["config_hash"])
    client = tracking_client(tracking_uri)
    experiment_id = ensure_experiment(client, spec.experiment)
    storage_location = storage.resolve(storage_path)

    results: dict[str, MemberResult] = {}
    queue: list[tuple[MemberSpec, MemberIdentity, WorkerResources, list[str]]] = []
    gpus = cluster_gpus()
    for member in members:
        identity = MemberIdentity(
            pool=spec.name,
            name=member.name,
            architecture=member.architecture,
            task=member.task,
            hparams=member.full_hparams(),
            train=spec.member_train(member),
            schema_hash=schema.hash,
            data_fingerprint=fingerprint,
        )
        previous = None if force else find_finished_member(client, experiment_id, identity)
        if previous is not None:
            logger.info(
                "%s: already trained for this data and spec (run %s), skipped",
                member.name,
                previous,
            )
            results[member.name] = _skipped(member, client.get_run(previous))
            continue
        resources, note = fit_resources(member.name, spec.member_resources(member), gpus)
        queue.append((member, identity, resources, [note] if note else []))

    capacity = _Capacity(max_concurrent or spec.max_concurrent)
    running: dict[Future[TrainOutcome], _Launched] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(queue)), thread_name_prefix="pool") as pool:
        while queue or running:
            for item in list(queue):
                member, identity, resources, notes = item
                problem = capacity.impossible(resources)
                if problem:
                    queue.remove(item)
                    results[member.name] = _failed(member, None, problem, notes)
                    logger.error("%s: %s", member.name, problem)
                    continue
                if not capacity.admit(resources):
                    continue
                queue.remove(item)
                run_id = start_member_run(
                    client, experiment_id, identity, resources.model_dump(), reopen=not force
                )
                job = TrainJob(
                    name=member.name,
                    module_factory=ZooModelFactory(
                        member.architecture, member.task, identity.hparams
                    ),
                    data_dir=prepared.location,
                    tasks=(member.task,),
                    config=identity.train,
                    storage_path=storage_location,
                    run_key=run_id,
                    resources=resources,
                    data_mode=spec.data_mode,
                )
                logger.info(
                    "%s: training %s on %s (run %s)",
                    member.name,
                    member.architecture,
                    member.task,
                    run_id,
                )
                running[pool.submit(run_train_job, job)] = _Launched(
                    member, identity, resources, run_id, notes
                )
            if not running:
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                launched = running.pop(future)
                capacity.release(launched.resources)
                results[launched.member.name] = _collect(client, future, launched, schema)
    ordered = [results[m.name] for m in members]
    return PoolReport(spec.name, spec.experiment, ordered, time.perf_counter() - started)


@dataclass(frozen=True)
class _Launched:
    """A member whose Ray Train run is in flight."""

    member: MemberSpec
    identity: MemberIdentity
    resources: WorkerResources
    run_id: str
    notes: list[str]


def _collect(
    client: MlflowClient, future: Future[TrainOutcome], launched: _Launched, schema: FeatureSchema
) -> MemberResult:
    """Log a finished member (or its failure) to MLflow and summarise it."""
    member, identity, run_id, notes = (
        launched.member,
        launched.identity,
        launched.run_id,
        launched.notes,
    )
    try:
        outcome: TrainOutcome = future.result()
    except Exception as exc:  # one member's failure must not stop the pool
        error = describe_failure(exc)
        logger.error("%s: FAILED: %s", member.name, error)
        fail_member_run(client, run_id, error)
        return _failed(member, run_id, error, notes)
    try:
        finish_member_run(client, run_id, identity, outcome, schema)
    except Exception as exc:
        error = f"trained, but logging to MLflow failed: {describe_failure(exc)}"
        logger.error("%s: %s", member.name, error)
        fail_member_run(client, run_id, error)
        return _failed(member, run_id, error, notes)
    logger.info(
        "%s: val AUC %.4f (epoch %d of %d) in %.1f s",
        member.name,
        outcome.best_score,
        outcome.best_epoch,
        len(outcome.history),
        outcome.wall_seconds,
    )
    return MemberResult(
        name=member.name,
        architecture=member.architecture,
        task=member.task,
        status="trained",
        run_id=run_id,
        val_auc=outcome.best_score,
        best_epoch=outcome.best_epoch,
        epochs_run=len(outcome.history),
        wall_seconds=outcome.wall_seconds,
        samples_per_s=outcome.samples_per_s,
        device=outcome.device,
        notes=notes + outcome.notes,
    )


def describe_failure(exc: BaseException) -> str:
    """The user's error inside a Ray Train worker, not Ray's wrapping of it."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        rank, error = sorted(failures.items())[0]
        cause = getattr(error, "cause", None) or error
        return f"{type(cause).__name__}: {cause} (worker rank {rank})"
    return f"{type(exc).__name__}: {exc}"


def _skipped(member: MemberSpec, run: Run) -> MemberResult:
    metrics = run.data.metrics
    return MemberResult(
        name=member.name,
        architecture=member.architecture,
        task=member.task,
        status="skipped",
        run_id=run.info.run_id,
        val_auc=metrics.get("best_val_auc"),
        best_epoch=int(metrics["best_epoch"]) if "best_epoch" in metrics else None,
        epochs_run=int(metrics["epochs_run"]) if "epochs_run" in metrics else None,
    )


def _failed(member: MemberSpec, run_id: str | None, error: str, notes: list[str]) -> MemberResult:
    return MemberResult(
        name=member.name,
        architecture=member.architecture,
        task=member.task,
        status="failed",
        run_id=run_id,
        error=error,
        notes=notes,
    )


class _Capacity:
    """CPUs/GPUs of the cluster handed out to running members (and a concurrency cap)."""

    def __init__(self, max_concurrent: int | None) -> None:
        import ray

        total = ray.cluster_resources()
        self.cpu = float(total.get("CPU", 0.0))
        self.gpu = float(total.get("GPU", 0.0))
        self.used_cpu = self.used_gpu = 0.0
        self.running = 0
        self.max_concurrent = max_concurrent

    @staticmethod
    def _need(resources: WorkerResources) -> tuple[float, float]:
        return resources.cpu * resources.num_workers, resources.gpu * resources.num_workers

    def impossible(self, resources: WorkerResources) -> str | None:
        cpu, gpu = self._need(resources)
        if cpu > self.cpu + 1e-9 or gpu > self.gpu + 1e-9:
            return (
                f"needs {cpu} CPU and {gpu} GPU but the whole Ray cluster has {self.cpu} CPU "
                f"and {self.gpu} GPU; lower its resources or num_workers"
            )
        return None

    def admit(self, resources: WorkerResources) -> bool:
        cpu, gpu = self._need(resources)
        if self.max_concurrent is not None and self.running >= self.max_concurrent:
            return False
        if self.used_cpu + cpu > self.cpu + 1e-9 or self.used_gpu + gpu > self.gpu + 1e-9:
            return False
        self.used_cpu += cpu
        self.used_gpu += gpu
        self.running += 1
        return True

    def release(self, resources: WorkerResources) -> None:
        cpu, gpu = self._need(resources)
        self.used_cpu -= cpu
        self.used_gpu -= gpu
        self.running -= 1
