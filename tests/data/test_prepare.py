"""prepare_dataset: splits, train-only fitting, OOV, reuse, determinism, encode_raw_file."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from emm_ray.config import load_yaml_config
from emm_ray.data.adapters import census, get_adapter
from emm_ray.data.prepare import (
    ROW_ID,
    DatasetConfig,
    PreparedDataset,
    encode_raw_file,
    prepare_dataset,
)
from emm_ray.data.schema import OOV_INDEX, FeatureSchema, transform_dense
from emm_ray.data.split import SPLITS
from emm_ray.errors import ConfigError, DataError, SchemaMismatchError

CENSUS_FILE = "census-income/census-income.data.gz"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _split_table(prepared: PreparedDataset, split: str) -> pa.Table:
    return pq.read_table(prepared.split_dir(split))


@pytest.fixture(scope="module")
def real_census(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    config = DatasetConfig(source="real", train_path=data_dir / CENSUS_FILE)
    return prepare_dataset(config, tmp_path_factory.mktemp("census") / "prepared")


def test_real_census_split_sums_and_is_stratified(real_census: PreparedDataset) -> None:
    info = real_census.split_info
    rows = {s: info["splits"][s]["rows"] for s in SPLITS}
    assert sum(rows.values()) == 199_523
    assert rows["validation"] == pytest.approx(19_952, abs=60)
    assert rows["test"] == pytest.approx(19_952, abs=60)
    for task, overall in [("income", 12_382 / 199_523), ("never_married", 86_485 / 199_523)]:
        for split in SPLITS:
            assert info["splits"][split]["positive_rate"][task] == pytest.approx(overall, abs=2e-3)
    assert sum(info["splits"][s]["positives"]["income"] for s in SPLITS) == 12_382
    assert real_census.schema.num_features == 39
    assert real_census.schema.task_names == ["income", "never_married"]
    assert real_census.schema.hash == "a94081e1b11ddfc4"  # frozen before `tasks` existed


def test_split_record_names_seed_method_and_source_checksum(
    real_census: PreparedDataset, data_dir: Path
) -> None:
    info = real_census.split_info
    digest = hashlib.sha256((data_dir / CENSUS_FILE).read_bytes()).hexdigest()
    assert info["sources"] == [
        {
            "role": "train",
            "path": str(data_dir / CENSUS_FILE),
            "sha256": digest,
            "assigned_fractions": {"validation": 0.1, "test": 0.1, "train": pytest.approx(0.8)},
        }
    ]
    assert info["seed"] == 0 and "stratified" in info["method"]
    assert info["schema_hash"] == real_census.schema.hash
    assert info["config"]["source"] == "real"


def test_encoded_shards_have_row_ids_and_model_dtypes(real_census: PreparedDataset) -> None:
    schema = real_census.schema
    ids = []
    for split in SPLITS:
        table = _split_table(real_census, split)
        assert table.schema.field(ROW_ID).type == pa.int64()
        assert {table.schema.field(n).type for n in schema.sparse_names} == {pa.int64()}
        assert {table.schema.field(n).type for n in schema.dense_names} == {pa.float32()}
        assert {table.schema.field(n).type for n in schema.task_names} == {pa.float32()}
        ids.append(table.column(ROW_ID).to_numpy())
    assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(199_523))


def test_vocabularies_and_scalers_are_fitted_on_the_training_rows_only(
    real_census: PreparedDataset, data_dir: Path
) -> None:
    raw = get_adapter("census").read(data_dir / CENSUS_FILE)
    train_ids = _split_table(real_census, "train").column(ROW_ID)
    train_raw = raw.take(train_ids)
    for field in real_census.schema.sparse:
        assert set(field.vocabulary) == set(pc.unique(train_raw.column(field.name)).to_pylist())
    for field in real_census.schema.dense:
        x = transform_dense(train_raw.column(field.name).to_numpy(), field.transform)
        assert field.mean == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
        assert field.std == pytest.approx(x.std(), rel=1e-9)
    money = {f.name: f.transform for f in real_census.schema.dense}
    assert money["capital_gains"] == "log1p" and money["age"] == "identity"


def test_encode_raw_file_matches_the_prepared_rows(
    real_census: PreparedDataset, data_dir: Path
) -> None:
    encoded = encode_raw_file(real_census.schema, "census", data_dir / CENSUS_FILE)
    test = _split_table(real_census, "test")
    expected = test.drop_columns([ROW_ID])
    assert encoded.take(test.column(ROW_ID)).equals(expected.select(encoded.column_names))


def _census_lines(data_dir: Path, count: int) -> list[str]:
    with gzip.open(data_dir / CENSUS_FILE, "rt") as handle:
        return [next(handle).rstrip("\n") for _ in range(count)]


def test_official_test_file_is_cut_into_validation_and_test_and_unseen_maps_to_oov(
    tmp_path: Path, data_dir: Path
) -> None:
    lines = _census_lines(data_dir, 4_000)
    train_file, test_file = tmp_path / "census.data", tmp_path / "census.test"
    train_file.write_text("\n".join(lines[:3_000]) + "\n")
    novel = lines[3_500].split(", ")
    novel[census.COLUMNS.index("class_of_worker")] = "Zeppelin pilot"
    test_lines = lines[3_000:]
    test_lines[500] = ", ".join(novel)
    test_file.write_text("\n".join(test_lines) + "\n")

    config = DatasetConfig(source="real", train_path=train_file, test_path=test_file)
    prepared = prepare_dataset(config, tmp_path / "prepared")
    rows = {s: prepared.num_rows(s) for s in SPLITS}
    assert rows["train"] == 3_000
    assert rows["validation"] + rows["test"] == 1_000
    assert abs(rows["validation"] - rows["test"]) <= 4  # 1:1, up to rounding per stratum
    vocabulary = prepared.schema.sparse[prepared.schema.sparse_names.index("class_of_worker")]
    assert "Zeppelin pilot" not in vocabulary.vocabulary
    novel_id = 3_000 + 500
    found = []
    for split in ("validation", "test"):
        table = _split_table(prepared, split)
        ids = table.column(ROW_ID).to_numpy()
        assert ids.min() >= 3_000  # held-out rows come only from the test file
        if novel_id in ids:
            row = int(np.flatnonzero(ids == novel_id)[0])
            found.append(table.column("class_of_worker")[row].as_py())
    assert found == [OOV_INDEX]
    assert prepared.split_info["sources"][1]["assigned_fractions"] == {
        "validation": 0.5,
        "test": 0.5,
    }


def test_given_validation_file_is_used_and_test_is_carved_from_train(data_dir: Path, tmp_path):
    prepared = prepare_dataset(DatasetConfig(name="ali_ccp", source="real"), tmp_path / "ali")
    assert prepared.num_rows("validation") == 50
    assert prepared.num_rows("train") + prepared.num_rows("test") == 100
    assert prepared.num_rows("test") > 0
    assert prepared.schema.dataset == "ali_ccp"
    assert len(prepared.schema.dense) == 8


def test_rerun_reuses_and_a_changed_config_is_refused(tmp_path: Path) -> None:
    config = DatasetConfig(rows=3_000)
    first = prepare_dataset(config, tmp_path / "out")
    shard = next((tmp_path / "out" / "train").glob("*.parquet"))
    stamp = shard.stat().st_mtime_ns
    again = prepare_dataset(config, tmp_path / "out")
    assert again.schema.hash == first.schema.hash
    assert shard.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="another config"):
        prepare_dataset(DatasetConfig(rows=3_000, seed=1), tmp_path / "out")
    replaced = prepare_dataset(DatasetConfig(rows=3_000, seed=1), tmp_path / "out", overwrite=True)
    assert replaced.split_info["seed"] == 1


def test_refuses_to_write_into_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a prepared dataset"):
        prepare_dataset(DatasetConfig(rows=2_000), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_synthetic_prepare_is_deterministic_and_independent_of_chunking(tmp_path: Path) -> None:
    base = dict(rows=12_000, rows_per_shard=5_000)
    a = prepare_dataset(DatasetConfig(**base, chunk_rows=12_000), tmp_path / "a")
    b = prepare_dataset(DatasetConfig(**base, chunk_rows=1_000), tmp_path / "b")
    assert a.schema.hash == b.schema.hash
    assert a.schema.dataset == "census-synthetic"
    source = a.split_info["sources"][0]
    assert (source["generator"], source["dataset"], source["rows"]) == (
        "emm_ray.data.synthetic",
        "census-synthetic",
        12_000,
    )
    for split in SPLITS:
        assert _split_table(a, split).equals(_split_table(b, split))
    assert len(list((tmp_path / "a" / "train").glob("*.parquet"))) == 2  # 9,600 rows / 5,000


def test_schema_hash_is_stable_across_save_and_load_and_tracks_vocabularies(
    tmp_path: Path,
) -> None:
    prepared = prepare_dataset(DatasetConfig(rows=3_000), tmp_path / "a")
    loaded = FeatureSchema.load(tmp_path / "a")
    assert loaded == prepared.schema and loaded.hash == prepared.schema.hash
    loaded.save(tmp_path)
    assert FeatureSchema.load(tmp_path / "schema.json").hash == prepared.schema.hash
    fewer = prepare_dataset(DatasetConfig(rows=3_000, sparse_min_count=20), tmp_path / "b")
    assert fewer.schema.cardinalities != prepared.schema.cardinalities
    assert fewer.schema.hash != prepared.schema.hash
    other_seed = prepare_dataset(DatasetConfig(rows=3_000, seed=5), tmp_path / "c")
    assert other_seed.schema.hash != prepared.schema.hash


def test_min_count_sends_rare_categories_to_oov(tmp_path: Path) -> None:
    prepared = prepare_dataset(DatasetConfig(rows=3_000, sparse_min_count=50), tmp_path / "p")
    train = _split_table(prepared, "train")
    field = prepared.schema.sparse[prepared.schema.sparse_names.index("country_of_birth_self")]
    index = train.column(field.name).to_numpy()
    assert (index == OOV_INDEX).any()
    assert index.max() < field.cardinality


def test_encode_raw_file_refuses_a_file_without_the_schema_fields(
    tmp_path: Path, data_dir: Path
) -> None:
    prepared = prepare_dataset(DatasetConfig(name="ali_ccp", source="real"), tmp_path / "ali")
    aitm = data_dir / "ali-ccp/paddlerec-aitm/train.csv"
    with pytest.raises(SchemaMismatchError, match="D109_14"):
        encode_raw_file(prepared.schema, "ali_ccp", aitm)
    with pytest.raises(SchemaMismatchError, match="dataset 'ali_ccp'"):
        encode_raw_file(prepared.schema, "census", data_dir / CENSUS_FILE)


def test_all_files_of_a_dataset_must_share_one_form(tmp_path: Path, data_dir: Path) -> None:
    config = DatasetConfig(
        name="ali_ccp",
        source="real",
        train_path=data_dir / "ali-ccp/torch-rechub/ali_ccp_train_sample.csv",
        validation_path=data_dir / "ali-ccp/paddlerec-aitm/train.csv",
    )
    with pytest.raises(DataError, match="another ali_ccp form"):
        prepare_dataset(config, tmp_path / "mixed")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="must be below 1"):
        DatasetConfig(validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="synthetic source takes none"):
        DatasetConfig(train_path="x.csv")
    with pytest.raises(ValueError, match="need a train_path"):
        DatasetConfig(source="real", test_path="x.csv")
    with pytest.raises(ValueError, match="extra"):
        DatasetConfig(rowz=10)


def test_dataset_yamls_load(tmp_path: Path) -> None:
    configs = sorted((REPO_ROOT / "configs" / "datasets").glob("*.yaml"))
    assert configs, "configs/datasets/*.yaml missing"
    for path in configs:
        config = load_yaml_config(path, DatasetConfig)
        stem = path.stem.removesuffix("-synthetic")
        dataset = stem.replace("-", "_").removesuffix(f"_{len(config.tasks or ())}tasks")
        if config.regime == "published":
            dataset = dataset.removesuffix("_published")
        assert (dataset, path.stem != stem) == (config.name, config.source == "synthetic")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: census\nsplit_seed: 3\n")
    with pytest.raises(ConfigError, match="split_seed"):
        load_yaml_config(bad, DatasetConfig)


def test_max_ids_keeps_each_fields_most_frequent_ids(tmp_path: Path) -> None:
    every = prepare_dataset(DatasetConfig(rows=3_000), tmp_path / "every")
    capped = prepare_dataset(DatasetConfig(rows=3_000, sparse_max_ids=5), tmp_path / "capped")
    for full, kept in zip(every.schema.sparse, capped.schema.sparse, strict=True):
        assert kept.vocabulary == full.vocabulary[:5]
    assert capped.schema.hash != every.schema.hash
    assert capped.split_info["config_hash"] != every.split_info["config_hash"]
    train = _split_table(capped, "train")
    for field in capped.schema.sparse:
        assert train.column(field.name).to_numpy().max() < field.cardinality
