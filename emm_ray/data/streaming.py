"""Prepared splits as Ray Data datasets, torch `Batch` iterators, or one in-memory `Batch`.

The Ray Data path (`read_split` -> `iter_batches`) streams shards through the object
store, so it works the same for a split of any size and from inside Ray Train workers
(`ray.train.get_dataset_shard(name)` gives a `DataIterator` that `iter_batches`
accepts). `load_split` reads a whole split with pyarrow for small data and evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from emm_ray import storage
from emm_ray.data.batch import Batch, BatchCollator
from emm_ray.data.prepare import ROW_ID, PreparedDataset
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import DataError

if TYPE_CHECKING:
    import ray.data

# Ray remote args of read and write tasks that run beside actors holding CPUs (a
# precompute or scoring actor pool): at Ray Data's default of 1 CPU, a node with 1 CPU
# and a 0.5-CPU actor could never schedule them, and the job waits forever.
IO_TASK: dict[str, Any] = {"num_cpus": 0.1}

# The smallest read-ahead cap a config accepts: Ray Data still runs one read task at a
# time under any cap, so even 1 MiB finishes (slowly); 0 would read nothing ahead.
MIN_READ_AHEAD_MIB = 1


def cap_read_ahead(options: ray.data.ExecutionOptions, buffer_mib: int) -> None:
    """Cap the object-store memory Ray Data fills with blocks read ahead at `buffer_mib`.
    By default it reads ahead until half the object store is full, so a split larger than
    that makes a run's memory grow with the table, not with the model."""
    options.resource_limits = options.resource_limits.copy(
        object_store_memory=buffer_mib * 1024 * 1024
    )


def ingest_options(buffer_mib: int) -> ray.data.ExecutionOptions:
    """Ray Train's default ingest options with read-ahead capped (`cap_read_ahead`)."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    cap_read_ahead(options, buffer_mib)
    return options


def split_columns(schema: FeatureSchema, with_row_id: bool = False) -> list[str]:
    """Columns a model needs (sparse, dense, labels), optionally with the stable row id."""
    columns = schema.sparse_names + schema.dense_names + schema.task_names
    return [ROW_ID, *columns] if with_row_id else columns


def read_split(
    prepared_dir: str | Path,
    split: str,
    *,
    with_row_id: bool = False,
    ray_remote_args: dict[str, Any] | None = None,
) -> ray.data.Dataset:
    """A lazy Ray Dataset over one split's parquet shards (needs a running Ray);
    `ray_remote_args` for its read tasks (e.g. `IO_TASK` beside actors holding CPUs).

    Reads with Ray Data's V1 parquet datasource. Measured on Ray 2.60 streaming an
    8M-row split: the default V2 reader held ~3 GB in a single read task before it
    yielded a block (process-tree peak 5.5 GB), while V1 streams file fragments with
    flat memory (peak 1.6 GB, object store under 120 MB); see
    benchmarks/results/data_throughput.md.
    """
    prepared = PreparedDataset.describe(prepared_dir)
    if storage.is_remote(prepared.location):
        prepared.checked_objects(split)
    else:
        prepared.checked_shards(split)
    return read_parquet_columns(
        prepared.split_location(split),
        split_columns(prepared.schema, with_row_id),
        ray_remote_args=ray_remote_args,
    )


def read_parquet_columns(
    directory: str | Path, columns: list[str], *, ray_remote_args: dict[str, Any] | None = None
) -> ray.data.Dataset:
    """A lazy Ray Dataset over `columns` of the parquet files under `directory`, paced
    (`pacing.IdleBackoff`)."""
    import ray.data

    from emm_ray.data.pacing import pace

    context = ray.data.DataContext.get_current()
    use_v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return pace(
            ray.data.read_parquet(
                str(directory),
                columns=columns,
                file_extensions=["parquet"],
                ray_remote_args=ray_remote_args or {},
            )
        )
    finally:
        context.use_datasource_v2 = use_v2


def iter_batches(
    data: ray.data.Dataset | ray.data.DataIterator,
    schema: FeatureSchema,
    batch_size: int,
    *,
    shuffle_buffer_rows: int | None = None,
    seed: int | None = None,
    prefetch_batches: int = 1,
    drop_last: bool = False,
    cached: Sequence[str] = (),
) -> Iterator[Batch]:
    """Torch `Batch`es from a Dataset or a Ray Train shard iterator.

    `shuffle_buffer_rows` turns on Ray Data's local shuffle (a buffer of at least that
    many rows, seeded by `seed`): enough for SGD without a global shuffle pass.
    Batches stay on the CPU; move them with `Batch.to(device)`. `cached` names stored
    precomputed features to collate into `Batch.cached` (`emm_ray.train.precompute`).
    """
    if shuffle_buffer_rows is not None and shuffle_buffer_rows < batch_size:
        raise ValueError(f"shuffle_buffer_rows ({shuffle_buffer_rows}) must be >= batch_size")
    yield from data.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=BatchCollator(schema, cached),
        local_shuffle_buffer_size=shuffle_buffer_rows,
        local_shuffle_seed=seed,
        prefetch_batches=prefetch_batches,
        drop_last=drop_last,
        device="cpu",
    )


def load_split(prepared_dir: str | Path, split: str) -> Batch:
    """The whole split as one `Batch`, read with pyarrow (no Ray needed)."""
    prepared = PreparedDataset.load(prepared_dir)
    wanted = split_columns(prepared.schema)
    shards = []
    for shard in prepared.checked_shards(split):
        try:
            shards.append(pq.read_table(shard, columns=wanted))
        except (OSError, pa.ArrowException) as exc:  # truncated, corrupted, not parquet
            raise DataError(
                f"cannot read this parquet shard ({exc}); prepare the data again", shard
            ) from None
    table = pa.concat_tables(shards)
    columns = {name: table.column(name).to_numpy() for name in table.column_names}
    return BatchCollator(prepared.schema)(columns)


def load_schema(prepared_dir: str | Path) -> FeatureSchema:
    """The schema a prepared dataset was encoded with (its shards stay where they are)."""
    return PreparedDataset.describe(prepared_dir).schema
