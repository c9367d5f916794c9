"""Locations in an object store (a real S3-compatible server, moto, on 127.0.0.1): prepared
data published there and read back through a node's own verified copy, and Train
checkpoints found there."""

from __future__ import annotations

import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from emm_ray import storage
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.streaming import load_split
from emm_ray.errors import ConfigError, DataError
from emm_ray.train.ray_job import RESUME_FILE, latest_checkpoint
from tests.conftest import BUCKET

CONFIG = DatasetConfig(rows=2000, rows_per_shard=500)


@pytest.fixture
def s3(object_store: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix in the store, with this process set up as its client."""
    for key, value in object_store.items():
        monkeypatch.setenv(key, value)
    return f"s3://{BUCKET}/test-{uuid.uuid4().hex[:8]}"


def on_node(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Act as another node: a node cache of its own."""
    monkeypatch.setenv(storage.NODE_CACHE_ENV, str(cache))


def test_paths_and_uris() -> None:
    assert storage.is_remote("s3://b/p") and storage.is_remote("gs://b/p")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("file:///tmp/x")
    assert not storage.is_remote("C:/data")  # a Windows drive, not a scheme
    assert storage.join("s3://b/p/", "a", "b") == "s3://b/p/a/b"
    assert storage.resolve("s3://b/p/") == "s3://b/p"
    assert storage.resolve("rel") == str(Path("rel").absolute())
    assert storage.resolve("file:///tmp/x") == "/tmp/x"
    assert storage.join("file:///tmp/x", "a") == "/tmp/x/a"


def test_prepared_data_round_trips_through_the_store(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_node(monkeypatch, tmp_path / "node-a")
    published = prepare_dataset(CONFIG, f"{s3}/prepared")
    assert published.location == f"{s3}/prepared"
    assert storage.read_bytes(f"{s3}/prepared/split.json") is not None
    local = prepare_dataset(CONFIG, tmp_path / "local")

    on_node(monkeypatch, tmp_path / "node-b")
    copy = PreparedDataset.load(f"{s3}/prepared")
    assert copy.path.is_relative_to(tmp_path / "node-b")
    assert copy.location == published.location
    for split in ("train", "validation", "test"):
        remote, here = load_split(copy.location, split), load_split(local.path, split)
        assert np.array_equal(remote.sparse.numpy(), here.sparse.numpy())
        assert np.array_equal(remote.labels.numpy(), here.labels.numpy())

    def no_upload(*_: object) -> None:
        raise AssertionError("prepared again instead of reusing the store's dataset")

    monkeypatch.setattr(storage, "upload", no_upload)
    assert prepare_dataset(CONFIG, f"{s3}/prepared").location == f"{s3}/prepared"


def test_streaming_work_reads_the_record_without_copying_shards(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_node(monkeypatch, tmp_path / "node-a")
    published = prepare_dataset(CONFIG, f"{s3}/prepared")
    on_node(monkeypatch, tmp_path / "node-b")
    described = PreparedDataset.describe(f"{s3}/prepared")
    assert described.schema.hash == published.schema.hash
    assert described.num_rows("train") == published.num_rows("train")
    assert not list((tmp_path / "node-b").rglob("*.parquet"))
    objects = described.checked_objects("train")
    assert [o.rsplit("/", 1)[1] for o in objects] == sorted(
        p.name for p in published.split_dir("train").glob("*.parquet")
    )

    storage.filesystem(objects[0])[0].delete_file(storage.filesystem(objects[0])[1])
    with pytest.raises(DataError, match="prepare wrote") as raised:
        described.checked_objects("train")
    assert raised.value.path == f"{s3}/prepared/train"


def test_an_interrupted_upload_is_replaced_and_a_bad_record_named(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_node(monkeypatch, tmp_path / "node-a")
    prepare_dataset(CONFIG, f"{s3}/prepared")
    fs, path = storage.filesystem(f"{s3}/prepared/split.json")
    fs.delete_file(path)  # as if the upload stopped before its last file
    assert prepare_dataset(CONFIG, f"{s3}/prepared").num_rows("train") > 0

    storage.write_bytes(f"{s3}/prepared/split.json", b"{not json")
    on_node(monkeypatch, tmp_path / "node-b")
    with pytest.raises(DataError, match="not a split.json written by prepare") as raised:
        PreparedDataset.load(f"{s3}/prepared")
    assert raised.value.path == f"{s3}/prepared/split.json"


def test_a_changed_object_is_refused_naming_it(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_node(monkeypatch, tmp_path / "node-a")
    prepared = prepare_dataset(CONFIG, f"{s3}/prepared")
    shards = sorted(p.name for p in prepared.split_dir("train").glob("*.parquet"))
    first, second = (f"{s3}/prepared/train/{name}" for name in shards[:2])
    storage.write_bytes(first, storage.read_bytes(second))  # a valid shard, the wrong one

    on_node(monkeypatch, tmp_path / "node-b")
    with pytest.raises(DataError, match="sha256") as raised:
        PreparedDataset.load(f"{s3}/prepared")
    assert raised.value.path == first
    assert not list((tmp_path / "node-b").rglob("*.parquet"))  # no half copy left behind


def test_a_location_holding_something_else_is_not_overwritten(s3: str) -> None:
    storage.write_bytes(f"{s3}/taken/notes.txt", b"not a dataset")
    with pytest.raises(ConfigError, match="not a prepared dataset"):
        prepare_dataset(CONFIG, f"{s3}/taken")
    assert storage.read_bytes(f"{s3}/taken/notes.txt") == b"not a dataset"


def test_the_newest_complete_checkpoint_is_found_in_the_store(s3: str) -> None:
    run = f"{s3}/ray_results/fuse-run"
    assert latest_checkpoint(run) is None
    storage.write_bytes(f"{run}/checkpoint_000000/{RESUME_FILE}", b"epoch 0")
    storage.write_bytes(f"{run}/checkpoint_000001/{RESUME_FILE}", b"epoch 1")
    storage.write_bytes(f"{run}/checkpoint_000002/partial.tmp", b"killed while writing")
    assert latest_checkpoint(run) == f"{run}/checkpoint_000001"


def test_an_unreachable_store_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(storage.StorageError, match="s3://nowhere/data.*AWS_ENDPOINT_URL"):
        prepare_dataset(CONFIG, "s3://nowhere/data")


def _load_on_this_node(location: str) -> str:
    return str(PreparedDataset.load(location).path)


def test_processes_of_one_node_share_one_verified_copy(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_node(monkeypatch, tmp_path / "node-a")
    prepare_dataset(CONFIG, f"{s3}/prepared")
    on_node(monkeypatch, tmp_path / "node-b")
    with ProcessPoolExecutor(3, mp_context=get_context("spawn")) as pool:
        paths = set(pool.map(_load_on_this_node, [f"{s3}/prepared"] * 3))
    [copy] = paths
    assert Path(copy).parent == tmp_path / "node-b" / "local" / "prepared"
    left = sorted(p.name for p in Path(copy).parent.iterdir() if not p.name.endswith(".lock"))
    assert left == [Path(copy).name]  # no staging directory left behind
    assert len(load_split(copy, "train").labels) == PreparedDataset.load(copy).num_rows("train")
