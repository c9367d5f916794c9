"""Ray Data input path: read_split -> Batches, load_split, and a 2-worker Ray Train audit."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from emm_ray.data.audit import audit_split
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.streaming import (
    MIN_READ_AHEAD_MIB,
    cap_read_ahead,
    ingest_options,
    iter_batches,
    load_schema,
    load_split,
    read_split,
)
from emm_ray.errors import DataError


@pytest.fixture(scope="module")
def prepared(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    """Real census rows: a 2,400-row train file (all of it is the train split, in 4 shards)
    and a 600-row test file cut 1:1 into validation and test."""
    root = tmp_path_factory.mktemp("streaming")
    with gzip.open(data_dir / "census-income/census-income.data.gz", "rt") as handle:
        lines = [next(handle) for _ in range(3_000)]
    (root / "census.data").write_text("".join(lines[:2_400]))
    (root / "census.test").write_text("".join(lines[2_400:]))
    config = DatasetConfig(
        source="real",
        train_path=root / "census.data",
        test_path=root / "census.test",
        rows_per_shard=700,
    )
    return prepare_dataset(config, root / "census")


def test_load_split_reads_a_whole_split_as_one_batch(prepared: PreparedDataset) -> None:
    batch = load_split(prepared.path, "validation")
    schema = prepared.schema
    assert len(batch) == prepared.num_rows("validation")
    assert batch.sparse.dtype == torch.int64 and batch.sparse.shape[1] == len(schema.sparse)
    assert batch.dense.dtype == torch.float32 and batch.dense.shape[1] == len(schema.dense)
    assert batch.labels.shape[1] == 2
    rates = batch.labels.mean(dim=0).tolist()
    expected = [
        prepared.split_info["splits"]["validation"]["positive_rate"][t] for t in schema.task_names
    ]
    assert rates == pytest.approx(expected)
    assert load_schema(prepared.path) == schema


def test_unknown_split_and_unprepared_directory(prepared: PreparedDataset, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        load_split(prepared.path, "holdout")
    with pytest.raises(DataError, match="not a prepared dataset"):
        load_split(tmp_path, "train")


@pytest.mark.timeout(120)
def test_ray_data_batches_match_the_in_memory_split(prepared: PreparedDataset, ray_cluster) -> None:
    schema = prepared.schema
    whole = load_split(prepared.path, "train")
    batches = list(iter_batches(read_split(prepared.path, "train"), schema, batch_size=256))
    assert all(len(b) == 256 for b in batches[:-1])
    assert sum(len(b) for b in batches) == len(whole) == prepared.num_rows("train")
    streamed_sparse = torch.cat([b.sparse for b in batches])
    streamed_labels = torch.cat([b.labels for b in batches])
    assert torch.equal(streamed_sparse.sum(0), whole.sparse.sum(0))
    assert torch.equal(streamed_labels.sum(0), whole.labels.sum(0))

    shuffled = list(
        iter_batches(
            read_split(prepared.path, "train"), schema, 256, shuffle_buffer_rows=1_000, seed=1
        )
    )
    assert sum(len(b) for b in shuffled) == len(whole)
    assert torch.equal(torch.cat([b.sparse for b in shuffled]).sum(0), whole.sparse.sum(0))
    assert not torch.equal(shuffled[0].sparse, batches[0].sparse)


def test_ingest_options_cap_read_ahead_and_keep_train_defaults() -> None:
    from ray.train import DataConfig

    default = DataConfig.default_ingest_options()
    capped = ingest_options(64)
    assert capped.resource_limits.object_store_memory == 64 * 1024 * 1024
    assert capped.resource_limits.cpu == default.resource_limits.cpu
    assert capped.preserve_order == default.preserve_order
    assert default.resource_limits.object_store_memory != 64 * 1024 * 1024


def test_training_and_scoring_accept_the_same_read_ahead_caps() -> None:
    from pydantic import ValidationError

    from emm_ray.serve.batch import ScoreJob
    from emm_ray.train.loop import TrainConfig

    job = {"model_uri": "models:/m@champion", "input_path": "in", "output_dir": "out"}
    assert TrainConfig(stream_buffer_mib=MIN_READ_AHEAD_MIB).stream_buffer_mib == 1
    assert ScoreJob(**job, buffer_mib=MIN_READ_AHEAD_MIB).buffer_mib == 1
    with pytest.raises(ValidationError, match="stream_buffer_mib"):
        TrainConfig(stream_buffer_mib=MIN_READ_AHEAD_MIB - 1)
    with pytest.raises(ValidationError, match="buffer_mib"):
        ScoreJob(**job, buffer_mib=MIN_READ_AHEAD_MIB - 1)


@pytest.mark.timeout(120)
def test_a_read_ahead_cap_below_one_block_still_streams_every_row(
    prepared: PreparedDataset, ray_cluster
) -> None:
    data = read_split(prepared.path, "train")
    cap_read_ahead(data.context.execution_options, 1)
    batches = list(iter_batches(data, prepared.schema, batch_size=256))
    assert data.context.execution_options.resource_limits.object_store_memory == 1024 * 1024
    assert sum(len(b) for b in batches) == prepared.num_rows("train")


def test_shuffle_buffer_must_hold_a_batch(prepared: PreparedDataset) -> None:
    with pytest.raises(ValueError, match="shuffle_buffer_rows"):
        next(iter_batches(None, prepared.schema, 256, shuffle_buffer_rows=100))  # type: ignore[arg-type]


@pytest.mark.timeout(240)
def test_two_train_workers_see_every_row_exactly_once_per_epoch(
    prepared: PreparedDataset, ray_cluster, tmp_path: Path
) -> None:
    rows = prepared.num_rows("train")
    assert rows == 2_400  # even: Ray Train's equal split would drop an odd row out
    audits = audit_split(
        prepared.path, "train", storage_path=tmp_path / "ray", num_workers=2, epochs=2
    )
    assert [a.epoch for a in audits] == [0, 1]
    for audit in audits:
        assert audit.ok, audit
        assert audit.seen_once == audit.expected_rows == rows
        assert audit.missing == audit.repeated == audit.foreign == audit.invalid_rows == 0
        assert audit.rows_per_worker == (rows // 2, rows // 2)
