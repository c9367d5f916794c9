"""Offline scoring of a table of any size with a registered model (`pipelines/score.py`).

Ray Data reads the raw table (CSV files with a header row, or parquet; one file or a
folder), an actor pool scores it, and the scores are written as parquet: the row id
column and one probability per task, into a staging folder renamed to `output_dir`
when the job is complete (a failed job leaves no partial scores). Each actor loads the
version pinned on the driver once (`pin_version`: the same verified load as Serve, so
a moving alias cannot mix two versions in one output) and encodes whole batches with
the schema's own vectorised encoder (`FeatureSchema.encode_features`, the encoding
training data went through; Serve's per-record encoder is held equal to it by a
property test).

Columns are matched by feature name; other columns are ignored. A categorical value is
read as text (an unseen one scores as out-of-vocabulary, as in Serve's default; Serve's
`unknown_category: reject` has no batch counterpart yet); a numeric feature must be a
finite number; an empty value of either kind is refused with the column and the row's
id, as Serve refuses a missing value, never scored as something else. Remote output
URIs are not supported yet (the staging rename is a local one).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.types as patypes
import torch
from pydantic import Field

from emm_ray.config import StrictModel
from emm_ray.data.schema import FeatureSchema
from emm_ray.data.streaming import IO_TASK, MIN_READ_AHEAD_MIB, cap_read_ahead
from emm_ray.errors import ConfigError, DataError
from emm_ray.serve.loading import load_and_pin, load_registered
from emm_ray.serve.servable import Servable
from emm_ray.serve.settings import ServeSettings

if TYPE_CHECKING:
    import ray.data

DEFAULT_ID_COLUMN = "row_id"


class ScoreJob(StrictModel):
    """What to score, with which model, where the scores go, and with how many actors;
    `buffer_mib` caps the rows Ray Data reads ahead of the actors (`cap_read_ahead`), so
    scoring a table larger than memory holds that much, not half the object store."""

    model_uri: str
    input_path: str
    output_dir: str
    tracking_uri: str | None = None
    id_column: str = DEFAULT_ID_COLUMN
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    batch_size: int = Field(8192, ge=1)
    buffer_mib: int = Field(512, ge=MIN_READ_AHEAD_MIB)


@dataclass(frozen=True)
class ScoreReport:
    """What was scored: rows, time, the version used, where the parquet files are."""

    model_name: str
    version: str
    rows: int
    seconds: float
    output_dir: str
    tasks: tuple[str, ...]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class BatchScorer:
    """One actor of the pool: the pinned model, loaded and verified once."""

    def __init__(self, settings: ServeSettings, id_column: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.servable, _ = load_registered(
            settings.model_uri, settings.tracking_uri, settings.pinned_version
        )
        self.id_column = id_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        probabilities = score_batch(self.servable, batch, self.id_column)
        columns = {self.id_column: batch.column(self.id_column)}
        for position, task in enumerate(self.servable.tasks):
            columns[task] = pa.array(probabilities[:, position])
        return pa.table(columns)


def score_batch(servable: Servable, batch: pa.Table, id_column: str) -> np.ndarray:
    """Probabilities `[rows, tasks]` for a batch of raw rows; bad values are refused."""
    schema = servable.schema
    check_columns(schema, batch.column_names, id_column)
    for field in schema.dense:
        column = batch.column(field.name)
        if not (patypes.is_integer(column.type) or patypes.is_floating(column.type)):
            raise DataError(
                f"numeric feature {field.name!r} holds {column.type} values, not numbers",
                column=field.name,
            )
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            row_id = batch.column(id_column)[int(bad[0])].as_py()
            raise DataError(
                f"numeric feature {field.name!r} is empty or not finite in {bad.size} rows, "
                f"first at {id_column} {row_id!r}",
                column=field.name,
            )
    for field in schema.sparse:
        column = batch.column(field.name)
        if column.null_count:
            first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"categorical feature {field.name!r} is empty in {column.null_count} rows, "
                f"first at {id_column} {batch.column(id_column)[first].as_py()!r}",
                column=field.name,
            )
    encoded = schema.encode_features(batch)
    rows = len(batch)
    sparse = np.empty((rows, len(schema.sparse)), dtype=np.int64)
    for i, field in enumerate(schema.sparse):
        sparse[:, i] = encoded[field.name].to_numpy()
    dense = np.empty((rows, len(schema.dense)), dtype=np.float32)
    for i, field in enumerate(schema.dense):
        dense[:, i] = encoded[field.name].to_numpy(zero_copy_only=False)
    return servable.predict_proba(sparse, dense)


def check_columns(schema: FeatureSchema, columns: list[str], id_column: str) -> None:
    missing = [f.name for f in (*schema.sparse, *schema.dense) if f.name not in columns]
    if id_column not in columns:
        raise DataError(
            f"no id column {id_column!r} (columns: {', '.join(columns[:20])}); name the "
            "column that identifies a row with --id-column",
            column=id_column,
        )
    if missing:
        raise DataError(f"missing feature columns {missing}", column=missing[0])


def read_raw_table(path: str, schema: FeatureSchema) -> ray.data.Dataset:
    """A lazy Ray Dataset over raw rows: parquet, or CSV with categories read as text."""
    import ray.data

    source = Path(path)
    if not source.exists():
        raise DataError("nothing to score: no such file or folder", path)
    entries = [source] if source.is_file() else sorted(source.iterdir())
    if any(entry.is_dir() for entry in entries):
        raise DataError(
            "the folder holds subfolders; give a folder of data files (or one file)", path
        )
    files = [str(entry) for entry in entries if entry.name[0] not in "._"]
    if not files:
        raise DataError("nothing to score: the folder holds no data files", path)
    suffixes = {_kind(Path(f).name) for f in files}
    if suffixes == {"parquet"}:
        return ray.data.read_parquet(files, ray_remote_args=IO_TASK)
    if suffixes == {"csv"}:
        text = {f.name: pa.string() for f in schema.sparse}
        return ray.data.read_csv(
            files,
            ray_remote_args=IO_TASK,
            convert_options=pacsv.ConvertOptions(
                column_types={**text, **{f.name: pa.float64() for f in schema.dense}},
            ),
        )
    raise DataError(
        f"cannot score files of kinds {sorted(suffixes)}: give .csv (with a header row, "
        "optionally compressed: .csv.gz) or .parquet files, one kind per folder",
        path,
    )


def _kind(name: str) -> str:
    """`parquet` (`x.parquet`, `x.snappy.parquet`), `csv` (`x.csv`, `x.csv.gz`) or the name."""
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv") or ".csv." in name:
        return "csv"
    return name


def score_table(job: ScoreJob) -> ScoreReport:
    """Score `job.input_path` on the connected Ray cluster into `job.output_dir`."""
    import ray
    import ray.data

    from emm_ray.data.pacing import pace

    started = time.perf_counter()
    requested = ServeSettings(model_uri=job.model_uri, tracking_uri=job.tracking_uri)
    settings, servable, description = load_and_pin(
        requested.model_copy(update={"tracking_uri": requested.resolved_tracking_uri()})
    )
    needed = job.actors * job.cpus_per_actor + IO_TASK["num_cpus"]
    available = float(ray.cluster_resources().get("CPU", 0.0))
    if needed > available:
        raise ConfigError(
            f"{job.actors} actors x {job.cpus_per_actor} CPU plus reading and writing need "
            f"{needed:g} CPUs; the Ray cluster has {available:g}: use fewer actors or "
            "--cpus-per-actor"
        )
    output = Path(job.output_dir)
    if output.exists() and any(output.iterdir()):
        raise DataError("the output folder is not empty; scores are never written over", output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists():
        output.rmdir()
    # Written beside, renamed when complete: a failed job leaves no partial scores.
    staging = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    # A dataset copies the context when it is created: set before reading. Ray Data's V2
    # file readers add a file-listing step at 1 CPU that `ray_remote_args` does not reach,
    # which stalls beside actors holding the other CPUs; the V1 readers take IO_TASK.
    context = ray.data.DataContext.get_current()
    original = (context.raise_original_map_exception, context.use_datasource_v2)
    context.raise_original_map_exception, context.use_datasource_v2 = True, False
    try:
        data = pace(read_raw_table(job.input_path, servable.schema))
        cap_read_ahead(data.context.execution_options, job.buffer_mib)
        check_columns(servable.schema, data.columns(), job.id_column)
        data.map_batches(
            BatchScorer,
            fn_constructor_kwargs={
                "settings": settings,
                "id_column": job.id_column,
                "threads": max(1, int(job.cpus_per_actor)),
            },
            batch_format="pyarrow",
            batch_size=job.batch_size,
            concurrency=job.actors,
            num_cpus=job.cpus_per_actor,
        ).write_parquet(str(staging), ray_remote_args=IO_TASK)
        staging.rename(output)
    except Exception as exc:
        cause = _user_error(exc)
        if cause is None:
            raise
        raise DataError(f"cannot score {job.input_path}: {cause}", job.input_path) from None
    finally:
        context.raise_original_map_exception, context.use_datasource_v2 = original
        shutil.rmtree(staging, ignore_errors=True)
    rows = pads.dataset(job.output_dir, format="parquet").count_rows()
    return ScoreReport(
        model_name=description.name,
        version=description.version,
        rows=rows,
        seconds=time.perf_counter() - started,
        output_dir=job.output_dir,
        tasks=servable.tasks,
    )


def _user_error(error: BaseException) -> str | None:
    """The message of a bad-data error raised inside a Ray Data task, if that is what
    failed (a `DataError` of ours, or pyarrow refusing to parse a value). Ray hands it
    over as the `cause` of its task error (`raise_original_map_exception` keeps Ray Data
    from wrapping it once more)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DataError | pa.ArrowInvalid):
            return str(seen)
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return None
