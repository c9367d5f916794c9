"""Prepared data damaged after `prepare` is refused, naming the file (issue 12, item 4)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.streaming import load_split, read_split
from emm_ray.errors import DataError


@pytest.fixture
def prepared(tmp_path: Path) -> PreparedDataset:
    return prepare_dataset(DatasetConfig(rows=3000, seed=1), tmp_path / "prepared")


def _first_shard(prepared: PreparedDataset, split: str) -> Path:
    return sorted(prepared.split_dir(split).glob("*.parquet"))[0]


def test_a_corrupted_shard_is_named(prepared: PreparedDataset) -> None:
    shard = _first_shard(prepared, "train")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"file {re.escape(str(shard))}.*prepare the data again"):
        load_split(prepared.path, "train")


@pytest.mark.parametrize(
    ("damage", "checksums"), [("inside a page", True), ("truncated", True), ("truncated", False)]
)
def test_a_damaged_shard_is_named_before_streaming(
    prepared: PreparedDataset, damage: str, checksums: bool
) -> None:
    """`stream` mode reads in Ray Data tasks, whose errors do not name the file: the
    shard's recorded sha256 (or, for data prepared before checksums were recorded, its
    footer) names it first."""
    if not checksums:
        info = json.loads((prepared.path / "split.json").read_text())
        del info["shards"]
        (prepared.path / "split.json").write_text(json.dumps(info))
    shard = _first_shard(prepared, "train")
    data = bytearray(shard.read_bytes())
    if damage == "truncated":
        del data[-20:]
    else:
        data[len(data) // 3 : len(data) // 3 + 64] = b"\xff" * 64
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"file {re.escape(str(shard))}.*prepare the data again"):
        read_split(prepared.path, "train")


@pytest.mark.parametrize("change", ["removed", "added"])
def test_a_removed_or_added_shard_is_refused(prepared: PreparedDataset, change: str) -> None:
    shard = _first_shard(prepared, "train")
    if change == "removed":
        shard.unlink()
    else:
        (shard.parent / "zz-extra.parquet").write_bytes(shard.read_bytes())
    for read in (load_split, read_split):
        with pytest.raises(DataError, match="did not write|no parquet"):
            read(prepared.path, "train")


def test_a_truncated_shard_is_named(prepared: PreparedDataset) -> None:
    shard = _first_shard(prepared, "validation")
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match=f"file {re.escape(str(shard))}"):
        load_split(prepared.path, "validation")


def test_a_split_without_shards_is_named(prepared: PreparedDataset) -> None:
    for shard in prepared.split_dir("test").glob("*.parquet"):
        shard.unlink()
    with pytest.raises(DataError, match="no parquet shards in the test split"):
        load_split(prepared.path, "test")


def test_a_schema_edited_after_prepare_is_refused(prepared: PreparedDataset) -> None:
    path = prepared.path / "schema.json"
    schema = json.loads(path.read_text())
    schema["dense"][0]["mean"] += 1.0  # the shards were scaled with the old mean
    path.write_text(json.dumps(schema))
    with pytest.raises(
        DataError, match=f"file {re.escape(str(path))}.*changed after the data was prepared"
    ):
        PreparedDataset.load(prepared.path)
