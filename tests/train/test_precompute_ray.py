"""Streamed splits get the fused model's input-only features once, stored under the pool's
key: the stored columns equal the model's own, a rerun reuses them, another pool never
reads them, and training from them starts exactly where training without them does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emm_ray.data.batch import Batch
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.streaming import iter_batches, read_parquet_columns
from emm_ray.fusion import FusionConfig
from emm_ray.fusion.stage import FusedModelFactory, MemberWeights
from emm_ray.models import build_model
from emm_ray.train.loop import TrainConfig, seed_everything
from emm_ray.train.precompute import SUCCESS_FILE, PrecomputedSplits, precompute_splits
from emm_ray.train.ray_job import TrainJob, run_train_job

pytestmark = [pytest.mark.ray]

SMALL = {"embed_dim": 4, "hidden": [16, 8]}
FUSION = FusionConfig(d_model=8, heads=2, tower_hidden=(8,), prediction="pool_residual")


def factory(schema_source: PreparedDataset, seed: int) -> FusedModelFactory:
    schema = schema_source.schema
    members = []
    for index, (architecture, task) in enumerate(
        [("mlp", "income"), ("deepfm", "income"), ("wide_deep", "never_married")]
    ):
        seed_everything(seed * 10 + index)
        model = build_model(architecture, schema, task, **SMALL)
        members.append(
            MemberWeights(
                f"{architecture}_{task}", architecture, task, SMALL, model.state_dict(), {}
            )
        )
    return FusedModelFactory(tuple(members), FUSION)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    root = tmp_path_factory.mktemp("precompute")
    return prepare_dataset(DatasetConfig(rows=3000, seed=3), root / "prepared")


def stored_batches(stored: PrecomputedSplits, split: str, prepared: PreparedDataset) -> Batch:
    """The split as stored with its features, read back through Ray Data as training reads it."""
    dataset = read_parquet_columns(stored.split_dir(split), stored.columns(prepared.schema))
    batches = list(iter_batches(dataset, prepared.schema, 1024, cached=stored.features))
    return Batch(
        torch.cat([b.sparse for b in batches]),
        torch.cat([b.dense for b in batches]),
        torch.cat([b.labels for b in batches]),
        {n: torch.cat([b.cached[n] for b in batches]) for n in stored.features},
    )


def test_stored_features_equal_the_models_own_and_are_reused_under_their_key(
    ray_cluster: None, prepared: PreparedDataset
) -> None:
    build = factory(prepared, seed=0)
    model = build(prepared.schema)
    names = tuple(model.precompute_names())  # every feature, wide level outputs too
    key = model.precompute_key(names)
    stored = precompute_splits(build, str(prepared.path), key, names)
    assert Path(stored.directory).parent == prepared.path / "precomputed"
    for split in ("train", "validation"):
        assert (Path(stored.directory) / split / SUCCESS_FILE).is_file()
    batch = stored_batches(stored, "validation", prepared)
    assert len(batch) == prepared.num_rows("validation")
    expected = model.precompute(batch.sparse, batch.dense)
    assert set(batch.cached) == set(expected) == set(names)
    for name, tensor in expected.items():
        torch.testing.assert_close(batch.cached[name], tensor, rtol=0, atol=1e-6)

    written = {p: p.stat().st_mtime_ns for p in Path(stored.directory).rglob("*.parquet")}
    again = precompute_splits(build, str(prepared.path), key, names)
    assert again == stored
    assert {p: p.stat().st_mtime_ns for p in Path(stored.directory).rglob("*.parquet")} == written

    other = factory(prepared, seed=1)(prepared.schema)
    assert other.precompute_key() != key  # other weights: never the stored columns


def test_an_unfinished_attempt_is_never_read_and_never_deleted(
    ray_cluster: None, prepared: PreparedDataset
) -> None:
    """A crashed attempt (or one another job is still writing) keeps its files; the
    split is computed in an attempt of its own, and readers read only that one."""
    build = factory(prepared, seed=2)
    model = build(prepared.schema)
    names = tuple(model.stored_names())
    key = model.precompute_key(names)
    other = prepared.path / "precomputed" / key / "validation" / "other-attempt"
    other.mkdir(parents=True)
    (other / "partial.parquet").write_bytes(b"not parquet")
    stored = precompute_splits(build, str(prepared.path), key, names, splits=("validation",))
    assert (other / "partial.parquet").exists()
    assert Path(stored.split_dir("validation")) != other
    assert len(stored_batches(stored, "validation", prepared)) == prepared.num_rows("validation")
    again = precompute_splits(build, str(prepared.path), key, names, splits=("validation",))
    assert again.attempts == stored.attempts


def test_streamed_training_from_stored_features_starts_where_it_would_without(
    ray_cluster: None, prepared: PreparedDataset, tmp_path: Path
) -> None:
    build = factory(prepared, seed=0)
    model = build(prepared.schema)
    outcomes = []
    for precompute in (False, True):
        config = TrainConfig(
            epochs=1, batch_size=512, patience=None, validate_initial=True, precompute=precompute
        )
        job = TrainJob(
            name=f"precompute-{precompute}",
            module_factory=build,
            data_dir=str(prepared.path),
            tasks=tuple(model.task_names),
            config=config,
            storage_path=str(tmp_path / "ray"),
            data_mode="stream",
            precompute_key=model.precompute_key(model.stored_names()),
            precompute_features=tuple(model.stored_names()),  # as the fuse stage stores
        )
        outcomes.append(run_train_job(job))
    plain, cached = outcomes
    assert plain.initial_metrics is not None and cached.initial_metrics is not None
    assert cached.initial_metrics == pytest.approx(plain.initial_metrics, abs=1e-6)
    for name, tensor in plain.state_dict.items():
        if name.startswith("ensemble."):  # the same stacking, fitted on the same rows
            torch.testing.assert_close(cached.state_dict[name], tensor, rtol=1e-5, atol=1e-6)


def _precompute_in_the_store(location: str, environment: dict[str, str]) -> dict[str, object]:
    """Runs in a fresh process with its own local Ray, whose workers inherit the store's
    settings as a cluster's nodes would have them: stores the validation features of data
    published at `location` and reads them back through Ray Data."""
    import os

    import ray

    from tests.conftest import start_local_ray

    os.environ.update(environment)
    start_local_ray(num_cpus=1, object_store_mib=256)
    try:
        prepared = PreparedDataset.describe(location)
        build = factory(prepared, seed=0)
        model = build(prepared.schema)
        names = tuple(model.stored_names())
        key = model.precompute_key(names)
        stored = precompute_splits(build, location, key, names, splits=("validation",))
        again = precompute_splits(build, location, key, names, splits=("validation",))
        batch = stored_batches(stored, "validation", PreparedDataset.load(location))
        expected = model.precompute(batch.sparse, batch.dense)
        return {
            "directory": stored.directory,
            "reused": again.attempts == stored.attempts,
            "rows": len(batch),
            "max_difference": max(
                float((batch.cached[n] - expected[n]).abs().max()) for n in names
            ),
        }
    finally:
        ray.shutdown()


def test_features_of_data_in_an_object_store_are_stored_there(
    object_store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming fusion on a cluster: the features land beside the shards in the store
    (not on a node's disk), are reused from there, and read back equal to the model's."""
    import uuid
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from emm_ray import storage
    from tests.conftest import BUCKET

    environment = {**object_store, storage.NODE_CACHE_ENV: str(tmp_path / "node")}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    location = f"s3://{BUCKET}/precompute-{uuid.uuid4().hex[:8]}/prepared"
    prepared = prepare_dataset(DatasetConfig(rows=2000, seed=3, rows_per_shard=500), location)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as child:
        result = child.submit(_precompute_in_the_store, location, environment).result()
    assert result["directory"].startswith(f"{location}/precomputed/")
    assert result["reused"]
    assert result["rows"] == prepared.num_rows("validation")
    assert result["max_difference"] <= 1e-6
    stored = [info.path for info in storage.files_under(str(result["directory"]))]
    assert any(name.endswith(".parquet") for name in stored)
    assert any(name.endswith(SUCCESS_FILE) for name in stored)
