"""Data audit: stream a prepared split through Ray Train workers and count who saw what.

`audit_split` runs `count_rows_per_epoch` in a `TorchTrainer`, reading the split with
Ray Data exactly as training does (`get_dataset_shard` -> `iter_torch_batches` with
`BatchCollator`). Each worker counts, per epoch, how often it saw every `row_id` and
how many rows carry invalid values (sparse index outside its vocabulary, non-finite
dense value, label not 0/1), and returns the counts as its checkpoint. The driver
merges them into one `EpochAudit` per epoch: rows missing, repeated or foreign.

Note: Ray Train splits datasets between workers with `equal=True`, which drops up to
`num_workers - 1` rows per epoch when the rows do not divide evenly; the audit shows
those as `missing`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from emm_ray import storage
from emm_ray.data.batch import Batch, BatchCollator
from emm_ray.data.prepare import ROW_ID, PreparedDataset
from emm_ray.data.schema import FeatureSchema
from emm_ray.data.streaming import read_split

DATASET_NAME = "audit"


@dataclass(frozen=True)
class EpochAudit:
    """What all workers together saw of one split in one epoch."""

    epoch: int
    expected_rows: int
    seen_once: int
    missing: int
    repeated: int
    foreign: int
    invalid_rows: int
    rows_per_worker: tuple[int, ...]

    @property
    def ok(self) -> bool:
        """Every row exactly once, nothing else, and all values valid."""
        bad = self.missing + self.repeated + self.foreign + self.invalid_rows
        return self.seen_once == self.expected_rows and bad == 0


class RowIdCollator(BatchCollator):
    """`BatchCollator` that also returns the batch's row ids (the audit needs both)."""

    def __call__(self, columns: dict[str, np.ndarray]) -> tuple[torch.Tensor, Batch]:  # type: ignore[override]
        row_ids = torch.from_numpy(np.array(columns[ROW_ID], dtype=np.int64))
        return row_ids, super().__call__(columns)


def invalid_rows(batch: Batch, cardinalities: torch.Tensor) -> int:
    """Rows with a sparse index outside `[0, cardinality)`, a non-finite dense or a bad label."""
    bad = ((batch.sparse < 0) | (batch.sparse >= cardinalities)).any(dim=1)
    if batch.dense.shape[1]:
        bad |= ~torch.isfinite(batch.dense).all(dim=1)
    bad |= ~((batch.labels == 0) | (batch.labels == 1)).all(dim=1)
    return int(bad.sum())


def count_rows_per_epoch(config: dict[str, Any]) -> None:
    """Ray Train worker loop: per epoch, count each row id and the invalid rows seen.

    `config`: `schema` (FeatureSchema), `num_ids` (row ids are in `[0, num_ids)`),
    `epochs`, `batch_size`. Reports once, with a checkpoint holding `rank-<r>.npz`.
    """
    import ray.train

    schema: FeatureSchema = config["schema"]
    epochs, num_ids = int(config["epochs"]), int(config["num_ids"])
    rank = ray.train.get_context().get_world_rank()
    shard = ray.train.get_dataset_shard(DATASET_NAME)
    cardinalities = torch.tensor(schema.cardinalities, dtype=torch.int64)
    seen = np.zeros((epochs, num_ids), dtype=np.uint16)
    invalid = np.zeros(epochs, dtype=np.int64)
    for epoch in range(epochs):
        for ids, batch in shard.iter_torch_batches(
            batch_size=int(config["batch_size"]), collate_fn=RowIdCollator(schema), device="cpu"
        ):
            np.add.at(seen[epoch], ids.numpy(), 1)
            invalid[epoch] += invalid_rows(batch, cardinalities)
    with tempfile.TemporaryDirectory() as directory:
        np.savez_compressed(Path(directory) / f"rank-{rank}.npz", seen=seen, invalid=invalid)
        ray.train.report(
            {"rows_seen": int(seen.sum())},
            checkpoint=ray.train.Checkpoint.from_directory(directory),
        )


def audit_split(
    prepared_dir: str | Path,
    split: str = "train",
    *,
    storage_path: str | Path,
    num_workers: int = 2,
    epochs: int = 2,
    batch_size: int = 256,
    cpus_per_worker: float = 0.5,
) -> list[EpochAudit]:
    """Run the audit on a running Ray cluster; one `EpochAudit` per epoch.

    `cpus_per_worker` below 1 leaves CPU for Ray Data's read tasks on small machines
    (2 workers at 1 CPU each on 2 cores wait forever for the read).
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    prepared = PreparedDataset.load(prepared_dir)
    expected = pq.read_table(prepared.split_dir(split), columns=[ROW_ID]).column(ROW_ID).to_numpy()
    num_ids = sum(prepared.num_rows(s) for s in prepared.split_info["splits"])
    trainer = TorchTrainer(
        count_rows_per_epoch,
        train_loop_config={
            "schema": prepared.schema,
            "num_ids": num_ids,
            "epochs": epochs,
            "batch_size": batch_size,
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(name=f"audit-{split}", storage_path=storage.resolve(storage_path)),
        datasets={DATASET_NAME: read_split(prepared_dir, split, with_row_id=True)},
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        reports = [np.load(f) for f in sorted(Path(directory).glob("rank-*.npz"))]
        per_worker = [r["seen"].astype(np.int64) for r in reports]
        invalid = sum(r["invalid"] for r in reports)
    if len(per_worker) != num_workers:
        raise RuntimeError(f"expected {num_workers} worker reports, got {len(per_worker)}")
    return [
        summarise_epoch(epoch, per_worker, int(invalid[epoch]), expected) for epoch in range(epochs)
    ]


def summarise_epoch(
    epoch: int, per_worker: list[np.ndarray], invalid: int, expected: np.ndarray
) -> EpochAudit:
    """Merge per-worker `[epochs, num_ids]` sighting counts against the split's row ids."""
    counts = sum(seen[epoch] for seen in per_worker)
    in_split = np.zeros(len(counts), dtype=bool)
    in_split[expected] = True
    return EpochAudit(
        epoch=epoch,
        expected_rows=len(expected),
        seen_once=int((counts[in_split] == 1).sum()),
        missing=int((counts[in_split] == 0).sum()),
        repeated=int((counts[in_split] > 1).sum()),
        foreign=int(counts[~in_split].sum()),
        invalid_rows=invalid,
        rows_per_worker=tuple(int(seen[epoch].sum()) for seen in per_worker),
    )
