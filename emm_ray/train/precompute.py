"""A module's input-only features, computed once per split and stored beside it, for streams.

A fused model's frozen pool gives every row the same outputs in every epoch (each
member's logit, its level-0 component output: `EMMModel.precompute`). In memory the
training loop computes them once per fit (`loop.with_precomputed`); a split that
streams gets the narrow ones (`EMMModel.stored_names`: the members' logits, so no step
runs a member end to end) here, once for all runs: Ray Data reads the split, an actor pool whose
actors each build the module once (`map_batches`) adds the features as columns
`cached.<name>`, and the result is written as parquet under
`<prepared location>/precomputed/<key>/<split>/` (in the object store on a cluster).
`key` is the module's `precompute_key()` (the frozen pool's checksum and the feature
names), so a changed pool never reads stale columns and an unchanged one reuses them in
every later run. Each attempt writes a directory of its own under the split; the split
is complete once its `_SUCCESS.json` (written last, with the row count) names a checked
attempt, and readers read only the attempt it names. So jobs that need the same key at
the same moment (Tune trials over the same members, on a shared store too) never write
into or delete each other's files; an attempt that crashed stays as unread files.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from emm_ray import storage
from emm_ray.data.batch import CACHED_PREFIX, BatchCollator
from emm_ray.data.prepare import PreparedDataset
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import DataError

logger = logging.getLogger(__name__)

SUCCESS_FILE = "_SUCCESS.json"
ROWS_PER_CALL = 4096


@dataclass(frozen=True)
class PrecomputedSplits:
    """Where a module's stored features live, their names (`Batch.cached` keys), and the
    finished attempt of each split."""

    directory: str
    features: tuple[str, ...]
    attempts: dict[str, str] = field(default_factory=dict)

    def split_dir(self, split: str) -> str:
        """The parquet files of `split`'s finished attempt."""
        return storage.join(self.directory, split, self.attempts[split])

    def columns(self, schema: FeatureSchema) -> list[str]:
        from emm_ray.data.streaming import split_columns

        return split_columns(schema) + [CACHED_PREFIX + name for name in self.features]


class FeatureActor:
    """One Ray Data actor: builds the module once, then adds its features to each batch."""

    def __init__(
        self, module_factory: Any, data_dir: str, features: Sequence[str], threads: int
    ) -> None:
        torch.set_num_threads(threads)
        schema = PreparedDataset.describe(data_dir).schema
        self.module = module_factory(schema).eval()
        self.collate = BatchCollator(schema)
        self.features = tuple(features)

    def __call__(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.collate(columns)
        computed = self.module.precompute(batch.sparse, batch.dense)
        return {
            **columns,
            **{CACHED_PREFIX + name: computed[name].numpy() for name in self.features},
        }


def precompute_splits(
    module_factory: Any,
    data_dir: str,
    key: str,
    features: Sequence[str],
    *,
    splits: Sequence[str] = ("train", "validation"),
    actors: int = 1,
    cpus_per_actor: float = 0.5,
    buffer_mib: int = 512,
) -> PrecomputedSplits:
    """Store the `features` of `module_factory(schema).precompute` for each split of
    `data_dir` under `key` (which must name them: `EMMModel.precompute_key(features)`).

    Reuses complete splits; needs a running Ray. `buffer_mib` caps the rows read ahead
    of the actors (`streaming.cap_read_ahead`).
    """
    from ray.data import ActorPoolStrategy

    from emm_ray.data.streaming import IO_TASK, cap_read_ahead, read_split

    prepared = PreparedDataset.describe(data_dir)
    directory = storage.join(prepared.location, "precomputed", key)
    attempts: dict[str, str] = {}
    for split in splits:
        finished = _finished_attempt(storage.join(directory, split))
        if finished is not None:
            logger.info("precomputed %s features of %s: reusing %s", split, key, finished)
            attempts[split] = finished
            continue
        attempt = uuid.uuid4().hex[:12]
        target = storage.join(directory, split, attempt)
        started = time.perf_counter()
        source = read_split(data_dir, split, with_row_id=True, ray_remote_args=IO_TASK)
        cap_read_ahead(source.context.execution_options, buffer_mib)
        source.map_batches(
            FeatureActor,
            fn_constructor_args=(
                module_factory,
                data_dir,
                tuple(features),
                max(1, int(cpus_per_actor)),
            ),
            batch_size=ROWS_PER_CALL,
            batch_format="numpy",
            compute=ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
            num_cpus=cpus_per_actor,
        ).write_parquet(target, ray_remote_args=IO_TASK)
        rows = _check_written(target, prepared.num_rows(split), split, tuple(features))
        record = {"key": key, "rows": rows, "features": list(features), "attempt": attempt}
        storage.write_bytes(
            storage.join(directory, split, SUCCESS_FILE), json.dumps(record).encode()
        )
        attempts[split] = attempt
        logger.info(
            "precomputed %s features of %s: %d rows in %.1f s -> %s",
            split,
            key,
            rows,
            time.perf_counter() - started,
            target,
        )
    stored = PrecomputedSplits(directory, tuple(features), attempts)
    return stored


def _finished_attempt(split_location: str) -> str | None:
    """The attempt `_SUCCESS.json` names (`None` while no attempt finished)."""
    recorded = storage.read_bytes(storage.join(split_location, SUCCESS_FILE))
    if recorded is None:
        return None
    try:
        return str(json.loads(recorded)["attempt"])
    except (ValueError, KeyError, TypeError):  # a record of another layout: redo it
        return None


def _check_written(target: str, expected: int, split: str, features: tuple[str, ...]) -> int:
    """Rows written; refuses output whose rows or columns do not match the split."""
    fs, _ = storage.filesystem(target)
    files = sorted(i.path for i in storage.files_under(target) if i.path.endswith(".parquet"))
    footers = []
    for path in files:
        with fs.open_input_file(path) as handle:
            footers.append(pq.ParquetFile(handle).metadata)
    written = sum(footer.num_rows for footer in footers)
    if written != expected:
        raise DataError(
            f"precomputing {split} wrote {written} rows to {target}, the split has {expected}"
        )
    if footers:
        present = set(footers[0].schema.to_arrow_schema().names)
        missing = [n for n in features if CACHED_PREFIX + n not in present]
        if missing:
            raise DataError(f"precomputed {split} in {target} lacks features {missing}")
    return written
