"""Run the generic loop inside a Ray Train `TorchTrainer`, for any module.

A `TrainJob` says what to train (a picklable `module_factory(schema) -> nn.Module`), on
which prepared dataset and tasks, with which `TrainConfig` and worker resources. The
worker builds the module itself (so nothing large or unpicklable crosses the network),
reads its data, runs `fit`, reports metrics and a resumable checkpoint every epoch, and
returns the best weights; `run_train_job` hands those back as a `TrainOutcome`.

Pool members, the fused EMM model and the baselines differ only in their factory.

Data: `memory` reads the split once into one tensor `Batch` per worker (parquet via
pyarrow, a strided shard per rank) and trains from it; `stream` iterates a Ray Data
shard batch by batch for splits larger than memory (with `precompute_key`, from the
splits with the module's stored input-only features, `emm_ray.train.precompute`);
`auto` picks `memory` when the decoded split is below `MEMORY_LIMIT_BYTES`. Validation
is never sharded: every worker scores the whole split, so all workers reach the same
early-stopping decision.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from emm_ray import storage
from emm_ray.config import StrictModel
from emm_ray.data.batch import Batch
from emm_ray.data.prepare import PreparedDataset
from emm_ray.data.schema import FeatureSchema
from emm_ray.data.streaming import ingest_options, load_schema
from emm_ray.progress import epoch_publisher
from emm_ray.runtime import current_node
from emm_ray.train.loop import (
    EpochEnd,
    IterableBatches,
    TensorBatches,
    TrainConfig,
    best_epoch_metrics,
    fit,
    seed_everything,
)

logger = logging.getLogger(__name__)

ModuleFactory = Callable[[FeatureSchema], nn.Module]
DataMode = Literal["auto", "memory", "stream"]
MEMORY_LIMIT_BYTES = 4 * 1024**3
RESUME_FILE = "train_state.pt"
SHUFFLE_BUFFER_ROWS = 100_000


class WorkerResources(StrictModel):
    """Ray resources of one training job: `num_workers` data-parallel workers, each with
    `cpu` CPUs and `gpu` GPUs (fractions share a device between concurrent jobs)."""

    num_workers: int = Field(1, ge=1)
    cpu: float = Field(0.5, gt=0)
    gpu: float = Field(0.0, ge=0)


@dataclass(frozen=True)
class TrainJob:
    """Everything a Ray Train run needs; picklable, so it can travel to a worker.

    `max_failures`: how often a run that lost a process (a worker, or the run's
    controller) is restarted: on Ray Train from its newest checkpoint (`run_train_job`),
    as a Ray task from scratch (`run_job`). An error raised by the training code itself
    is never retried.

    `run_key` (the MLflow run id the job reports to) names the Train run, so a job
    started again after its driver died finds the killed attempt's checkpoints and goes
    on from there; without it every run gets a fresh name.
    """

    name: str
    module_factory: ModuleFactory
    data_dir: str
    tasks: tuple[str, ...]
    config: TrainConfig
    storage_path: str
    resources: WorkerResources = WorkerResources()
    data_mode: DataMode = "auto"
    max_failures: int = 2
    precompute_key: str | None = None
    precompute_features: tuple[str, ...] = ()
    run_key: str | None = None


@dataclass
class TrainOutcome:
    """The best weights (CPU) and what training reported, as the driver sees them."""

    name: str
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    stopped_early: bool
    device: str
    wall_seconds: float
    run_path: str
    notes: list[str] = field(default_factory=list)
    initial_metrics: dict[str, float] | None = None
    resumed_after_epoch: int = 0  # > 0: a process died and the run went on from that epoch
    nodes: tuple[str, ...] = ()  # the Ray node of each worker, by rank (placement records)
    finish_report: dict[str, dict[str, float]] | None = None  # `FitResult.finish_report`
    final_metrics: dict[str, float] | None = None  # set when the finish step changed the model

    @property
    def shipped_metrics(self) -> dict[str, float]:
        """Validation metrics of the weights returned: the best epoch's, or those measured
        after the finish step changed the model (a fused task that kept its ensemble)."""
        return self.final_metrics or self.best_metrics

    @property
    def best_score(self) -> float:
        """Mean validation AUC of the best epoch (the early-stopping criterion)."""
        return self.best_metrics["val_auc"]

    @property
    def samples_per_s(self) -> float:
        """Training throughput over all epochs (rows / pure training seconds)."""
        rows = sum(h["train_rows"] for h in self.history)
        seconds = sum(h["train_seconds"] for h in self.history)
        return rows / seconds if seconds > 0 else 0.0


def trains_in_process(job: TrainJob) -> bool:
    """Whether `job` is small enough to skip Ray Train: one worker, a split held in memory.

    Such a job is seconds to a minute of work, less than a `TorchTrainer`'s start-up
    (worker group, controller, checkpoint upload; measured in docs/ARCHITECTURE.md);
    `run_job` then runs it in one Ray task, a Tune trial runs it in its own process.
    """
    return is_small_job(job.resources, job.data_dir, job.data_mode)


def is_small_job(resources: WorkerResources, data_dir: str, data_mode: DataMode) -> bool:
    """`trains_in_process` for a job not built yet."""
    return resources.num_workers == 1 and resolve_data_mode(data_dir, data_mode) == "memory"


def run_job(job: TrainJob) -> TrainOutcome:
    """Train `job` in one Ray task if `trains_in_process`, else on Ray Train.

    The task asks for the job's CPUs and GPUs and is retried `max_failures` times from
    scratch (a small job has no checkpoint worth resuming from).
    """
    if not trains_in_process(job):
        return run_train_job(job)
    import ray

    resources, note = fit_resources(job.name, job.resources, cluster_gpus())
    task = ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu, max_retries=job.max_failures)(
        fit_in_process
    )
    outcome: TrainOutcome = ray.get(task.remote(replace(job, resources=resources)))
    outcome.notes += [note] if note else []
    return outcome


def fit_in_process(
    job: TrainJob, on_epoch: Callable[[EpochEnd], None] | None = None
) -> TrainOutcome:
    """Train `job` right here on its split in memory (no Ray Train), e.g. in a Tune trial."""
    started = time.perf_counter()
    device = torch.device("cuda" if job.resources.gpu > 0 and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(job.config.num_threads or max(1, int(job.resources.cpu)))
    schema = load_schema(job.data_dir)
    seed_everything(job.config.seed)
    module = job.module_factory(schema).to(device)
    train, validation = _memory_sources(job, 0, 1, device)
    publish = epoch_publisher(job.name, job.config.epochs)

    def report(end: EpochEnd) -> None:
        publish(end)
        if on_epoch is not None:
            on_epoch(end)

    result = fit(
        module,
        train,
        validation,
        [schema.task_index(t) for t in job.tasks],
        job.config,
        task_names=job.tasks,
        device=device,
        on_epoch=report,
    )
    return TrainOutcome(
        name=job.name,
        state_dict=result.best_state,
        history=result.history,
        best_epoch=result.best_epoch,
        best_metrics=result.best_metrics,
        stopped_early=result.stopped_early,
        device=str(device),
        wall_seconds=time.perf_counter() - started,
        run_path="",
        initial_metrics=result.initial_metrics,
        nodes=(current_node(),),
        finish_report=result.finish_report,
        final_metrics=result.final_metrics,
    )


def cluster_gpus() -> float:
    """GPUs the connected Ray cluster has (0 on a CPU-only cluster)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def fit_resources(
    name: str, resources: WorkerResources, available_gpus: float
) -> tuple[WorkerResources, str | None]:
    """Drop a GPU request the cluster cannot serve, with a message saying so."""
    if resources.gpu <= 0 or available_gpus > 0:
        return resources, None
    message = (
        f"{name}: {resources.gpu} GPU per worker requested, but the Ray cluster has no GPU; "
        f"training on CPU ({resources.cpu} CPU per worker) instead"
    )
    logger.warning(message)
    return resources.model_copy(update={"gpu": 0.0}), message


def run_train_job(job: TrainJob, callbacks: Sequence[Any] = ()) -> TrainOutcome:
    """Train `job` on the connected Ray cluster; raises the worker's error if training fails.

    `callbacks` go to Train's `RunConfig`, e.g. Tune's `TuneReportCallback` inside a trial.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources, note = fit_resources(job.name, job.resources, cluster_gpus())
    job = replace(job, resources=resources)
    mode = resolve_data_mode(job.data_dir, job.data_mode)
    datasets = None
    cached: tuple[str, ...] = ()
    if mode == "stream" and job.precompute_key and job.config.precompute:
        datasets, cached = _precomputed_datasets(job)
    elif mode == "stream":
        from emm_ray.data.streaming import read_split

        datasets = {s: read_split(job.data_dir, s) for s in ("train", "validation")}
    resources_per_worker = {"CPU": resources.cpu}
    if resources.gpu > 0:
        resources_per_worker["GPU"] = resources.gpu
    run_name = (
        f"{job.name}-{job.run_key}"
        if job.run_key
        else f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    run_config = RunConfig(
        name=run_name,
        storage_path=job.storage_path,
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        failure_config=FailureConfig(max_failures=0),  # restarts are decided below
        callbacks=list(callbacks),
    )
    started = time.perf_counter()
    run_location = storage.join(job.storage_path, run_name)
    resume_from = latest_checkpoint(run_location) if job.run_key else None
    if resume_from:
        logger.warning("%s: going on from the interrupted run's %s", job.name, resume_from)
    for attempt in range(job.max_failures + 1):
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={
                "job": job,
                "mode": mode,
                "cached": cached,
                "resume_from": resume_from,
            },
            scaling_config=ScalingConfig(
                num_workers=resources.num_workers,
                use_gpu=resources.gpu > 0,
                resources_per_worker=resources_per_worker,
            ),
            run_config=run_config,
            datasets=datasets,
            dataset_config=DataConfig(
                datasets_to_split=["train"],
                execution_options=ingest_options(job.config.stream_buffer_mib),
            ),
        )
        try:
            result = trainer.fit()
            break
        except Exception as error:
            if attempt == job.max_failures or not lost_a_process(error):
                raise
            resume_from = latest_checkpoint(run_location) or resume_from
            logger.warning(
                "%s: a training process died (%s); restarting from the last checkpoint "
                "(restart %d of %d)",
                job.name,
                error,
                attempt + 1,
                job.max_failures,
            )
    wall = time.perf_counter() - started
    returned: dict[str, Any] = result.return_value
    return TrainOutcome(
        name=job.name,
        state_dict=torch.load(io.BytesIO(returned["state_dict"]), weights_only=True),
        history=returned["history"],
        best_epoch=returned["best_epoch"],
        best_metrics=best_epoch_metrics(
            returned["history"], returned["best_epoch"], returned["initial_metrics"]
        ),
        stopped_early=returned["stopped_early"],
        device=returned["device"],
        wall_seconds=wall,
        run_path=result.path,
        notes=[note] if note else [],
        initial_metrics=returned["initial_metrics"],
        resumed_after_epoch=returned["resumed_after_epoch"],
        nodes=tuple(returned["nodes"]),
        finish_report=returned["finish_report"],
        final_metrics=returned["final_metrics"],
    )


def latest_checkpoint(run_location: str) -> str | None:
    """The newest complete checkpoint a Train run wrote (`None` if none yet): a
    directory, or a URI when the run stores to an object store.

    Complete: it holds the resume file (a process killed while a checkpoint was being
    written leaves one without it). A restarted run is handed it through its loop
    config: Train v2 neither restores a failed run built anew under the same name nor
    takes `resume_from_checkpoint`.
    """
    written = [
        info
        for info in storage.files_under(run_location)
        if info.base_name == RESUME_FILE and info.path.rsplit("/", 2)[-2].startswith("checkpoint_")
    ]
    if not written:
        return None
    # Train names checkpoints by time (`checkpoint_<date>_<time>`), so the name orders
    # them; object stores keep modification times to the second only.
    newest = max(info.path.rsplit("/", 1)[0] for info in written)
    fs, _ = storage.filesystem(run_location)
    return storage.uri_of(fs, newest, run_location)


def lost_a_process(error: BaseException) -> bool:
    """Whether a Train run failed because a process died (a worker or the run's
    controller: killed, out of memory, node lost) rather than because the training code
    raised: only then is a restart worth it, since an error of the code or the data
    would just happen again."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        return all(_lost_process(f) for f in failures.values())
    return _lost_process(error)


def _lost_process(failure: BaseException) -> bool:
    """A dead worker actor, as Ray reports it or wrapped in Train's failed health check
    (which keeps the actor's error as `health_check_failure`)."""
    from ray.exceptions import RayActorError, WorkerCrashedError

    if isinstance(failure, RayActorError | WorkerCrashedError):
        return True
    inner = getattr(failure, "health_check_failure", None)
    return isinstance(inner, BaseException) and _lost_process(inner)


def _precomputed_datasets(job: TrainJob) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The job's streamed splits with the module's stored input-only features beside them."""
    from emm_ray.data.streaming import read_parquet_columns
    from emm_ray.train.precompute import precompute_splits

    stored = precompute_splits(
        job.module_factory,
        job.data_dir,
        str(job.precompute_key),
        job.precompute_features,
        actors=job.resources.num_workers,
        cpus_per_actor=job.resources.cpu,
        buffer_mib=job.config.stream_buffer_mib,
    )
    schema = load_schema(job.data_dir)
    datasets = {
        split: read_parquet_columns(stored.split_dir(split), stored.columns(schema))
        for split in ("train", "validation")
    }
    return datasets, stored.features


def resolve_data_mode(data_dir: str, data_mode: DataMode) -> Literal["memory", "stream"]:
    """`memory` when the decoded training split fits comfortably, else `stream`."""
    if data_mode != "auto":
        return data_mode
    prepared = PreparedDataset.describe(data_dir)
    schema = prepared.schema
    rows = prepared.num_rows("train")
    row_bytes = 8 * len(schema.sparse) + 4 * (len(schema.dense) + len(schema.tasks))
    return "memory" if rows * row_bytes < MEMORY_LIMIT_BYTES else "stream"


def _train_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs on every Ray Train worker; rank 0 returns the best weights and the history."""
    import ray.train
    import ray.train.torch

    job: TrainJob = loop_config["job"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(job.config.num_threads or max(1, int(job.resources.cpu)))

    schema = load_schema(job.data_dir)
    task_indices = [schema.task_index(t) for t in job.tasks]
    seed_everything(job.config.seed)
    module = job.module_factory(schema).to(device)
    if world > 1:
        module = ray.train.torch.prepare_model(module, move_to_device=False)
    if loop_config["mode"] == "memory":
        train, validation = _memory_sources(job, rank, world, device)
    else:
        train, validation = _stream_sources(job, schema, device, loop_config["cached"])

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(loop_config["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = torch.load(
                Path(directory) / RESUME_FILE, map_location=device, weights_only=True
            )

    publish = epoch_publisher(job.name, job.config.epochs)

    def report(end: EpochEnd) -> None:
        metrics = {**end.metrics, "best_epoch": end.state.best_epoch, "is_best": end.is_best}
        with tempfile.TemporaryDirectory() as directory:
            saved = None
            if rank == 0:
                publish(end)
                torch.save(end.resume_state(), Path(directory) / RESUME_FILE)
                saved = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=saved)

    result = fit(
        module,
        train,
        validation,
        task_indices,
        job.config,
        task_names=job.tasks,
        device=device,
        on_epoch=report,
        resume=resume,
    )
    nodes = [current_node()]
    if world > 1:
        nodes = [""] * world
        torch.distributed.all_gather_object(nodes, current_node())
    if rank != 0:
        return None
    weights = io.BytesIO()  # Ray Train refuses tensors in return values; bytes travel fine
    torch.save(result.best_state, weights)
    return {
        "state_dict": weights.getvalue(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "initial_metrics": result.initial_metrics,
        "finish_report": result.finish_report,
        "final_metrics": result.final_metrics,
        "stopped_early": result.stopped_early,
        "device": str(device),
        "resumed_after_epoch": int(resume["fit"]["epoch"]) if resume else 0,
        "nodes": nodes,
    }


def _memory_sources(
    job: TrainJob, rank: int, world: int, device: torch.device
) -> tuple[TensorBatches, TensorBatches]:
    from emm_ray.data.streaming import load_split

    train = load_split(job.data_dir, "train")
    if world > 1:
        train = train.slice(slice(rank, None, world))
    validation = load_split(job.data_dir, "validation")
    if device.type == "cuda":
        train, validation = train.to(device), validation.to(device)
    config = job.config
    return (
        TensorBatches(train, config.batch_size, shuffle=True, seed=config.seed),
        TensorBatches(validation, config.eval_batch_size_on(device)),
    )


def _stream_sources(
    job: TrainJob, schema: FeatureSchema, device: torch.device, cached: Sequence[str]
) -> tuple[IterableBatches, IterableBatches]:
    import ray.train

    from emm_ray.data.streaming import iter_batches

    config = job.config
    pin = device.type == "cuda"
    train_shard = ray.train.get_dataset_shard("train")
    validation_shard = ray.train.get_dataset_shard("validation")

    def train_epoch(epoch: int) -> Iterator[Batch]:
        batches = iter_batches(
            train_shard,
            schema,
            config.batch_size,
            shuffle_buffer_rows=max(SHUFFLE_BUFFER_ROWS, config.batch_size),
            seed=config.seed * 1_000_003 + epoch,
            prefetch_batches=2,
            cached=cached,
        )
        return (b.pin_memory() if pin else b for b in batches)

    def validation_pass(_: int) -> Iterator[Batch]:
        batches = iter_batches(
            validation_shard,
            schema,
            config.eval_batch_size_on(device),
            prefetch_batches=2,
            cached=cached,
        )
        return (b.pin_memory() if pin else b for b in batches)

    return IterableBatches(train_epoch), IterableBatches(validation_pass)
