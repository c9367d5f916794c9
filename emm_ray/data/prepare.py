"""The `prepare` stage: raw files or a synthetic generator -> split, encoded parquet shards.

A prepared directory holds `schema.json` (fields, vocabularies, scalers, tasks),
`split.json` (how the split was made: seed, method, rows and positive rates per split
and task, source checksums, the config and its hash) and `train/`, `validation/`,
`test/` parquet shards. Each shard row is `row_id` (stable, unique in the dataset),
one int64 index per sparse field, one float32 per dense field and one float32 0/1
label per task.

Everything streams in two passes over the source, so memory does not grow with rows:
pass 1 assigns splits and fits vocabularies (category counts) and scalers (running
moments) on training rows only; pass 2 assigns the same splits again and writes
encoded chunks. A synthetic source is regenerated for pass 2 (it is deterministic),
a file is re-read. The output appears atomically (written beside, then renamed), and
re-running with the same config and the same source files reuses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from emm_ray import storage
from emm_ray.config import StrictModel
from emm_ray.data.adapters import Adapter, data_dir, get_adapter
from emm_ray.data.layout import DatasetLayout
from emm_ray.data.schema import (
    SCHEMA_FILE,
    FeatureSchema,
    dense_field_from_moments,
    sparse_field_from_counts,
    transform_dense,
)
from emm_ray.data.split import SPLITS, FixedSplit, StratifiedSplitter, strata
from emm_ray.data.synthetic import SPECS, SYNTHETIC_SUFFIX, Regime, SyntheticGenerator
from emm_ray.errors import ConfigError, DataError, SchemaMismatchError

FORMAT_VERSION = 1
SPLIT_FILE = "split.json"
ROW_ID = "row_id"
ROW_GROUP_ROWS = 65_536  # parquet row groups: Ray Data reads (and holds) one at a time


class DatasetConfig(StrictModel):
    """Which data to prepare and how to split it; every field has a one-machine default.

    `source: real` reads `train_path` (and optionally `validation_path`, `test_path`);
    without paths it uses the dataset's files under `EMM_DATA_DIR` (default
    `../shared/data`). A split without its own file is carved from the training file;
    a test file without a validation file is cut 1:1 into validation and test, as the
    MMoE/PLE papers do with census. Relative paths are taken from the current directory.

    `tasks` chooses the dataset's tasks, in order (census: see docs/census_tasks.md);
    unset, the dataset's default tasks are used and the config hash is what it was
    before the setting existed. Datasets with a fixed task set refuse it.
    """

    name: Literal["census", "ali_ccp", "aliexpress"] = "census"
    source: Literal["synthetic", "real"] = "synthetic"
    train_path: Path | None = None
    validation_path: Path | None = None
    test_path: Path | None = None
    rows: int = Field(20_000, gt=0, description="rows to generate (synthetic source)")
    seed: int = 0
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    test_file_validation_fraction: float = Field(0.5, gt=0, lt=1)
    rows_per_shard: int = Field(250_000, gt=0)
    chunk_rows: int = Field(250_000, gt=0, description="rows generated/encoded at a time")
    sparse_min_count: int = Field(1, ge=1)
    sparse_max_ids: int | None = Field(
        None,
        ge=1,
        description="keep at most this many ids per sparse field, the most frequent; rarer "
        "ids share the out-of-vocabulary bucket (bounds the models' embedding tables)",
    )
    tasks: tuple[str, ...] | None = Field(
        None, description="tasks to prepare, in order; unset: the dataset's default tasks"
    )
    regime: Regime = Field(
        "planted",
        description="synthetic source: `planted` (strong planted signal, easy label rates) "
        "or `published` (the real dataset's label rates and AUC levels)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DatasetConfig:
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must be below 1")
        paths = (self.train_path, self.validation_path, self.test_path)
        if self.source == "synthetic" and any(p is not None for p in paths):
            raise ValueError("paths are for source: real; a synthetic source takes none")
        if self.train_path is None and any(p is not None for p in paths):
            raise ValueError("validation_path/test_path need a train_path too")
        if self.regime == "published" and (
            self.source == "real" or SPECS[self.name].published is None
        ):
            raise ValueError(
                f"regime: published is a synthetic setting of ali_ccp and aliexpress "
                f"(got source {self.source!r}, name {self.name!r})"
            )
        try:
            get_adapter(self.name).check_tasks(self.tasks)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def raw_files(self) -> dict[str, Path]:
        """Role (`train`/`validation`/`test`) -> absolute path, for `source: real`."""
        if self.source == "synthetic":
            return {}
        if self.train_path is None:
            root = data_dir()
            return {role: root / rel for role, rel in get_adapter(self.name).default_files.items()}
        given = {
            "train": self.train_path,
            "validation": self.validation_path,
            "test": self.test_path,
        }
        return {role: p.expanduser().absolute() for role, p in given.items() if p is not None}


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared directory: its schema and its split record (`split.json`).

    `location` is where the dataset lives for every process (an absolute path, or an
    object store URI on a cluster); `path` is a copy this process reads, the location
    itself when that is local, else this node's verified copy (`_node_copy`). Hand
    `location`, never `path`, to work that may run on another node.
    """

    path: Path
    schema: FeatureSchema
    split_info: dict[str, Any]
    location: str

    @classmethod
    def describe(cls, location: str | Path) -> PreparedDataset:
        """The schema and split record only: for a dataset in an object store, without
        copying its shards to this node (for work that streams them from the store)."""
        if storage.is_remote(location):
            return _node_copy(storage.resolve(location), shards=False)
        return cls.load(location)

    @classmethod
    def load(cls, location: str | Path) -> PreparedDataset:
        """The dataset with its shards readable here: in an object store, through this
        node's verified copy (`_node_copy`)."""
        if storage.is_remote(location):
            return _node_copy(storage.resolve(location))
        path = Path(location).absolute()  # Ray workers run elsewhere: they need absolute paths
        if not (path / SPLIT_FILE).is_file():
            raise DataError(f"not a prepared dataset (no {SPLIT_FILE}); run prepare first", path)
        info = json.loads((path / SPLIT_FILE).read_text())
        schema = FeatureSchema.load(path)
        recorded = info.get("schema_hash")
        if recorded and recorded != schema.hash:
            raise DataError(
                f"the schema was changed after the data was prepared (hash {schema.hash}, "
                f"but {SPLIT_FILE} records {recorded}): the shards are encoded with the other "
                "schema; prepare the data again",
                path / SCHEMA_FILE,
            )
        return cls(path, schema, info, str(path))

    def split_location(self, split: str) -> str:
        """Where the split's shards live for every process (readers on other nodes)."""
        self.split_dir(split)
        return storage.join(self.location, split)

    def split_dir(self, split: str) -> Path:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}", self.path)
        return self.path / split

    def num_rows(self, split: str) -> int:
        self.split_dir(split)
        return int(self.split_info["splits"][split]["rows"])

    def checked_shards(self, split: str) -> list[Path]:
        """The split's parquet shards, each footer readable, each file's sha256 the one
        `prepare` recorded, their rows adding up to what it wrote: a truncated, damaged,
        missing, extra or swapped shard is a `DataError` naming it before any reader
        (Ray Data's tasks, whose errors do not name the file) touches the data."""
        shards = sorted(self.split_dir(split).glob("*.parquet"))
        if not shards:
            raise DataError(f"no parquet shards in the {split} split", self.split_dir(split))
        rows = 0
        for shard in shards:
            try:
                rows += pq.read_metadata(shard).num_rows
            except (OSError, pa.ArrowException) as exc:
                raise DataError(
                    f"cannot read this parquet shard ({exc}); prepare the data again", shard
                ) from None
        self._check_contents(split, shards)
        if rows != self.num_rows(split):
            raise DataError(
                f"the {split} shards hold {rows} rows, {self.num_rows(split)} were prepared "
                f"({len(shards)} shards): a shard was removed, added or swapped; prepare the "
                "data again",
                self.split_dir(split),
            )
        return shards

    def checked_objects(self, split: str) -> list[str]:
        """For a dataset in an object store, the split's shard locations, checked where
        they are: the names `prepare` recorded, every footer readable, the rows adding up.
        Contents are trusted to the store here (a sha256 means reading every shard);
        every node copy checks them (`_node_copy`)."""
        location = self.split_location(split)
        fs, _ = storage.filesystem(location)
        objects = {
            info.base_name: info.path
            for info in storage.files_under(location)
            if info.base_name.endswith(".parquet")
        }
        recorded = self.split_info.get("shards", {}).get(split)
        if not objects or (recorded is not None and set(objects) != set(recorded)):
            raise DataError(
                f"the {split} split holds shards {sorted(objects)}, prepare wrote "
                f"{sorted(recorded or [])}; prepare the data again",
                location,
            )
        rows = 0
        for name, path in sorted(objects.items()):
            try:
                with fs.open_input_file(path) as handle:
                    rows += pq.ParquetFile(handle).metadata.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise DataError(
                    f"cannot read this parquet shard ({exc}); prepare the data again",
                    storage.join(location, name),
                ) from None
        if rows != self.num_rows(split):
            raise DataError(
                f"the {split} shards hold {rows} rows, {self.num_rows(split)} were prepared",
                location,
            )
        return [storage.join(location, name) for name in sorted(objects)]

    def _check_contents(self, split: str, shards: list[Path]) -> None:
        """Each shard's sha256 against the one `prepare` recorded (datasets prepared
        before checksums were recorded are checked by footer and rows only)."""
        recorded: dict[str, str] | None = self.split_info.get("shards", {}).get(split)
        if recorded is None:
            return
        names = {shard.name for shard in shards}
        if names != set(recorded):
            raise DataError(
                f"the {split} split holds shards {sorted(names - set(recorded))} that prepare "
                f"did not write and lacks {sorted(set(recorded) - names)}; prepare the data "
                "again",
                self.split_dir(split),
            )
        for shard in shards:
            if _sha256(shard) != recorded[shard.name]:
                raise DataError(
                    "this parquet shard changed since prepare wrote it (sha256 differs); "
                    "prepare the data again",
                    shard,
                )


@dataclass
class _Source:
    """One stream of raw rows and the rule assigning its rows to splits."""

    role: str
    path: Path | None
    chunks: Callable[[], Iterator[pa.Table]]
    splitter: Callable[[], StratifiedSplitter | FixedSplit]
    details: dict[str, Any] = field(default_factory=dict)


def prepare_dataset(
    config: DatasetConfig, output_dir: str | Path, *, overwrite: bool = False
) -> PreparedDataset:
    """Prepare `config`'s data into `output_dir` (a directory, or an object store URI),
    or reuse it if already prepared so."""
    files = config.raw_files()
    checksums = {role: _sha256(path) for role, path in files.items()}
    config_hash = _config_hash(config, files, checksums)
    if storage.is_remote(output_dir):
        return _prepare_remote(config, storage.resolve(output_dir), config_hash, overwrite)
    output_dir = Path(output_dir).absolute()
    if (output_dir / SPLIT_FILE).is_file():
        existing = PreparedDataset.load(output_dir)
        if existing.split_info.get("config_hash") == config_hash:
            return existing
        if not overwrite:
            raise ConfigError(
                f"{output_dir} holds data prepared from another config or other source files "
                f"(config hash {existing.split_info.get('config_hash')}, now {config_hash}); "
                "choose another directory or pass overwrite=True"
            )
    elif output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(f"{output_dir} exists and is not a prepared dataset; refusing to write")

    layout, sources = _plan(config, files)
    stats = _Pass1(layout)
    for source in sources:
        splitter = source.splitter()
        for raw in source.chunks():
            stats.add(raw, splitter.assign(_strata(raw, layout)))
    stats.check_nonempty(files.get("train"))
    schema = stats.schema(config.sparse_min_count, config.sparse_max_ids)

    staging = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        written = _write_encoded(schema, layout, sources, staging, config.rows_per_shard)
        if written != stats.rows:
            raise DataError(f"source changed while preparing: {stats.rows} rows, then {written}")
        schema.save(staging)
        info = _split_record(config, config_hash, schema, sources, checksums, stats)
        info["shards"] = _shard_checksums(staging)
        (staging / SPLIT_FILE).write_text(json.dumps(info, indent=1))
        return _publish(staging, output_dir, config_hash)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prepare_remote(
    config: DatasetConfig, location: str, config_hash: str, overwrite: bool
) -> PreparedDataset:
    """Prepare on this node's disk, then upload: the shards and the schema first,
    `split.json` last, so a reader never sees a dataset whose upload did not finish."""
    recorded = storage.read_bytes(storage.join(location, SPLIT_FILE))
    if recorded is not None:
        _, existing_hash = _record_of(recorded, location)
        if existing_hash == config_hash:
            return PreparedDataset.load(location)
        if not overwrite:
            raise ConfigError(
                f"{location} holds data prepared from another config or other source files "
                f"(config hash {existing_hash}, now {config_hash}); choose another location "
                "or pass overwrite=True"
            )
    elif not _unfinished_upload(location):
        raise ConfigError(f"{location} exists and is not a prepared dataset; refusing to write")
    storage.delete_dir(location)
    local = prepare_dataset(config, storage.node_cache("prepared", config_hash))
    for split in SPLITS:
        storage.upload(local.split_dir(split), storage.join(location, split))
    for name in (SCHEMA_FILE, SPLIT_FILE):
        storage.write_bytes(storage.join(location, name), (local.path / name).read_bytes())
    return replace(local, location=location)


def _unfinished_upload(location: str) -> bool:
    """Nothing at `location`, or only what an upload writes before `split.json` (an
    upload that was interrupted, to be replaced)."""
    _, root = storage.filesystem(location)
    ours = (*SPLITS, SCHEMA_FILE)
    return all(
        info.path[len(root) :].lstrip("/").split("/")[0] in ours
        for info in storage.files_under(location)
    )


def _record_of(recorded: bytes, location: str) -> tuple[dict[str, Any], str]:
    """`split.json`'s contents and config hash; a `DataError` naming it if unreadable."""
    try:
        info = json.loads(recorded)
        return info, str(info["config_hash"])
    except (ValueError, KeyError, TypeError):
        raise DataError(
            f"not a {SPLIT_FILE} written by prepare; prepare the data again",
            storage.join(location, SPLIT_FILE),
        ) from None


def _node_copy(location: str, *, shards: bool = True) -> PreparedDataset:
    """This node's copy of the dataset at `location`, made once per node and prepared
    config: the shards, each one's sha256 checked against `split.json` before the copy
    is used, or with `shards=False` only the record and the schema (what streaming
    needs: Ray Data reads the shards from the store). Processes of one node take turns
    (a file lock): one downloads, the others then find its copy."""
    recorded = storage.read_bytes(storage.join(location, SPLIT_FILE))
    if recorded is None:
        raise DataError(f"not a prepared dataset (no {SPLIT_FILE}); run prepare first", location)
    _, config_hash = _record_of(recorded, location)
    copy = storage.node_cache("prepared" if shards else "described", config_hash)

    def current() -> bool:
        return (copy / SPLIT_FILE).is_file() and (copy / SPLIT_FILE).read_bytes() == recorded

    if not current():
        copy.parent.mkdir(parents=True, exist_ok=True)
        with open(copy.with_name(f".{copy.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not current():
                _download(location, recorded, copy, shards)
    return replace(PreparedDataset.load(copy), location=location)


def _download(location: str, recorded: bytes, copy: Path, shards: bool) -> None:
    staging = copy.with_name(f".{copy.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if shards:
            for split in SPLITS:
                storage.download(storage.join(location, split), staging / split)
        schema = storage.read_bytes(storage.join(location, SCHEMA_FILE))
        if schema is None:
            raise DataError(f"prepared dataset without {SCHEMA_FILE}", location)
        staging.mkdir(parents=True, exist_ok=True)
        (staging / SCHEMA_FILE).write_bytes(schema)
        (staging / SPLIT_FILE).write_bytes(recorded)
        if shards:
            try:
                for split in SPLITS:
                    PreparedDataset.load(staging).checked_shards(split)
            except DataError as exc:  # name the object, not this node's passing copy
                where = str(exc.path or staging).replace(str(staging), location, 1)
                raise DataError(exc.message, where, exc.row, exc.column) from None
        shutil.rmtree(copy, ignore_errors=True)  # a copy of an older upload
        staging.rename(copy)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, output_dir: Path, config_hash: str) -> PreparedDataset:
    """Move a finished dataset into place; if a concurrent run got there first, use theirs."""
    if output_dir.exists() and not (output_dir / SPLIT_FILE).is_file():
        shutil.rmtree(output_dir)
    elif output_dir.exists():
        existing = PreparedDataset.load(output_dir)
        if existing.split_info.get("config_hash") == config_hash:
            return existing
        shutil.rmtree(output_dir)
    staging.rename(output_dir)
    return PreparedDataset.load(output_dir)


def encode_raw_file(schema: FeatureSchema, dataset: str, path: str | Path) -> pa.Table:
    """Encode a raw file of `dataset`'s format with an existing (fitted) schema.

    For evaluation on new files and serving: categories unseen in training map to the
    OOV index. The file must have every field and task of the schema; a dataset with a
    choice of tasks (census) is read for the schema's tasks.
    """
    base = schema.dataset.removesuffix(SYNTHETIC_SUFFIX)
    if base != dataset:
        raise SchemaMismatchError(
            f"schema is for dataset {schema.dataset!r}, the file is read as {dataset!r}"
        )
    adapter = get_adapter(dataset)
    path = Path(path)
    tasks = tuple(schema.task_names) if adapter.task_names else None
    layout = adapter.layout(path, tasks)
    have = set(layout.sparse) | set(layout.dense_names) | set(layout.task_names)
    missing = [
        n for n in schema.sparse_names + schema.dense_names + schema.task_names if n not in have
    ]
    if missing:
        raise SchemaMismatchError(
            f"file {path} lacks fields of schema {schema.hash} ({schema.dataset}): {missing}"
        )
    return pa.concat_tables([schema.encode(raw) for raw in adapter.iter_chunks(path, tasks)])


def _plan(config: DatasetConfig, files: dict[str, Path]) -> tuple[DatasetLayout, list[_Source]]:
    """The sources to read, in row-id order, each with its split rule."""
    if config.source == "synthetic":
        generator = SyntheticGenerator(config.name, config.seed, config.tasks, config.regime)
        carve = {"validation": config.validation_fraction, "test": config.test_fraction}
        return generator.layout, [
            _Source(
                "synthetic",
                None,
                lambda: generator.iter_chunks(config.rows, config.chunk_rows),
                _carved(carve, config.seed),
                generator.describe(config.rows),
            )
        ]

    adapter = get_adapter(config.name)
    layout = adapter.layout(files["train"], config.tasks)
    for role, path in files.items():
        if adapter.layout(path, config.tasks) != layout:
            raise DataError(
                f"the {role} file is in another {config.name} form than the train file "
                f"{files['train']}; all files of one dataset must share a layout",
                path,
            )
    has_validation, has_test = "validation" in files, "test" in files
    carve_from_train = {}
    if not has_validation and not has_test:
        carve_from_train["validation"] = config.validation_fraction
    if not has_test:
        carve_from_train["test"] = config.test_fraction
    if has_test and not has_validation:
        test_rule = _carved(
            {"validation": config.test_file_validation_fraction}, config.seed, "test"
        )
    else:
        test_rule = _carved({}, config.seed, "test")
    rules = {
        "train": _carved(carve_from_train, config.seed),
        "validation": _carved({}, config.seed, "validation"),
        "test": test_rule,
    }
    return layout, [
        _Source(role, files[role], _reader(adapter, files[role], config.tasks), rules[role])
        for role in SPLITS
        if role in files
    ]


def _carved(
    fractions: dict[str, float], seed: int, rest: str = "train"
) -> Callable[[], StratifiedSplitter | FixedSplit]:
    """A splitter giving `fractions` to named splits and the remainder to `rest`."""
    if not fractions:
        return lambda: FixedSplit(rest)
    full = {**fractions, rest: 1.0 - sum(fractions.values())}
    return lambda: StratifiedSplitter(full, seed)


def _reader(
    adapter: Adapter, path: Path, tasks: tuple[str, ...] | None
) -> Callable[[], Iterator[pa.Table]]:
    return lambda: adapter.iter_chunks(path, tasks)


def _strata(raw: pa.Table, layout: DatasetLayout) -> np.ndarray:
    labels = np.stack([raw.column(t).to_numpy() for t in layout.task_names], axis=1)
    return strata(labels)


class _Pass1:
    """Rows and positives per split; category counts and dense moments of training rows."""

    def __init__(self, layout: DatasetLayout) -> None:
        self.layout = layout
        self.rows = dict.fromkeys(SPLITS, 0)
        self.positives = {s: dict.fromkeys(layout.task_names, 0) for s in SPLITS}
        self._counts: dict[str, list[pa.Table]] = {n: [] for n in layout.sparse}
        dims = len(layout.dense)
        self._n, self._mean, self._m2 = 0, np.zeros(dims), np.zeros(dims)

    def add(self, raw: pa.Table, codes: np.ndarray) -> None:
        for code, split in enumerate(SPLITS):
            mask = codes == code
            self.rows[split] += int(mask.sum())
            for task in self.layout.task_names:
                self.positives[split][task] += int(raw.column(task).to_numpy()[mask].sum())
        train = raw.filter(pa.array(codes == SPLITS.index("train")))
        if train.num_rows:
            self._count_categories(train)
            self._update_moments(train)

    def _count_categories(self, train: pa.Table) -> None:
        for name in self.layout.sparse:
            counts = pc.value_counts(train.column(name))
            parts = self._counts[name]
            parts.append(
                pa.table({"category": counts.field("values"), "count": counts.field("counts")})
            )
            if len(parts) >= 16:
                self._counts[name] = [_merge_counts(parts)]

    def _update_moments(self, train: pa.Table) -> None:
        if not self.layout.dense:
            return
        x = np.stack(
            [
                transform_dense(train.column(d.name).to_numpy(), d.transform)
                for d in self.layout.dense
            ],
            axis=1,
        )
        n_b, mean_b = len(x), x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        n = self._n + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * n_b / n
        self._m2 = self._m2 + m2_b + delta**2 * self._n * n_b / n
        self._n = n

    def check_nonempty(self, train_file: Path | None) -> None:
        total = sum(self.rows.values())
        for split in SPLITS:
            if self.rows[split] == 0:
                raise DataError(
                    f"the {split} split would be empty ({total} rows in all); "
                    "give more rows or larger split fractions",
                    train_file,
                )

    def schema(self, min_count: int, max_ids: int | None) -> FeatureSchema:
        sparse = []
        for name in self.layout.sparse:
            merged = _merge_counts(self._counts[name])
            sparse.append(
                sparse_field_from_counts(
                    name, merged.column("category"), merged.column("count"), min_count, max_ids
                )
            )
        dense = [
            dense_field_from_moments(d.name, d.transform, float(m), float(v))
            for d, m, v in zip(
                self.layout.dense, self._mean, self._m2 / max(self._n, 1), strict=True
            )
        ]
        return FeatureSchema(
            dataset=self.layout.dataset,
            sparse=tuple(sparse),
            dense=tuple(dense),
            tasks=self.layout.tasks,
        )


def _merge_counts(parts: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(parts).group_by("category").aggregate([("count", "sum")])
    return table.rename_columns(["category", "count"])


class _ShardWriter:
    """Writes one split as `part-00000.parquet`, ... of at most `rows_per_shard` rows."""

    def __init__(self, directory: Path, schema: pa.Schema, rows_per_shard: int) -> None:
        directory.mkdir(parents=True)
        self.directory, self.schema, self.rows_per_shard = directory, schema, rows_per_shard
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        self._shards = 0

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                path = self.directory / f"part-{self._shards:05d}.parquet"
                self._writer = pq.ParquetWriter(path, self.schema)
                self._shards += 1
            take = min(table.num_rows, self.rows_per_shard - self._in_shard)
            self._writer.write_table(table.slice(0, take), row_group_size=ROW_GROUP_ROWS)
            self.rows += take
            self._in_shard += take
            table = table.slice(take)
            if self._in_shard == self.rows_per_shard:
                self._close_shard()

    def close(self) -> None:
        if self._writer is not None:
            self._close_shard()

    def _close_shard(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self._writer, self._in_shard = None, 0


def _write_encoded(
    schema: FeatureSchema,
    layout: DatasetLayout,
    sources: list[_Source],
    directory: Path,
    rows_per_shard: int,
) -> dict[str, int]:
    """Pass 2: re-assign splits, encode, write; returns rows written per split."""
    arrow_schema = None
    writers: dict[str, _ShardWriter] = {}
    next_id = 0
    for source in sources:
        splitter = source.splitter()
        for raw in source.chunks():
            codes = splitter.assign(_strata(raw, layout))
            ids = np.arange(next_id, next_id + raw.num_rows, dtype=np.int64)
            next_id += raw.num_rows
            encoded = schema.encode(raw).add_column(0, ROW_ID, pa.array(ids))
            if arrow_schema is None:
                arrow_schema = encoded.schema
                writers = {
                    s: _ShardWriter(directory / s, arrow_schema, rows_per_shard) for s in SPLITS
                }
            for code, split in enumerate(SPLITS):
                mask = codes == code
                if mask.any():
                    writers[split].write(encoded.filter(pa.array(mask)))
    for writer in writers.values():
        writer.close()
    return {split: writers[split].rows for split in SPLITS}


def _split_record(
    config: DatasetConfig,
    config_hash: str,
    schema: FeatureSchema,
    sources: list[_Source],
    checksums: dict[str, str],
    stats: _Pass1,
) -> dict[str, Any]:
    parts = []
    for source in sources:
        rule = source.splitter()
        parts.append(
            {
                "role": source.role,
                "path": None if source.path is None else str(source.path),
                "sha256": checksums.get(source.role),
                "assigned_fractions": rule.fractions,
                **source.details,
            }
        )
    splits = {
        split: {
            "rows": stats.rows[split],
            "positives": stats.positives[split],
            "positive_rate": {
                t: (p / stats.rows[split] if stats.rows[split] else None)
                for t, p in stats.positives[split].items()
            },
        }
        for split in SPLITS
    }
    return {
        "format_version": FORMAT_VERSION,
        "dataset": schema.dataset,
        "source": config.source,
        "seed": config.seed,
        "method": (
            "stratified on the joint label of all tasks: within each label combination, rows "
            "in source order are cut into blocks of 1000 whose slots are shuffled with a seed "
            "derived from (seed, label combination, block); each split owns its fraction of "
            "every block's slots (see emm_ray.data.split)"
        ),
        "sources": parts,
        "splits": splits,
        "schema_hash": schema.hash,
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash,
    }


def _config_hash(config: DatasetConfig, files: dict[str, Path], checksums: dict[str, str]) -> str:
    """Identifies what was prepared; unset `tasks` and `sparse_max_ids` and the default
    `regime` are left out, keeping older hashes valid."""
    exclude = {"train_path", "validation_path", "test_path", "chunk_rows"}
    if config.tasks is None:
        exclude.add("tasks")
    if config.sparse_max_ids is None:
        exclude.add("sparse_max_ids")
    if config.regime == "planted":
        exclude.add("regime")
    payload = {
        "format_version": FORMAT_VERSION,
        "config": config.model_dump(mode="json", exclude=exclude),
        "files": {role: str(path) for role, path in files.items()},
        "sha256": checksums,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _shard_checksums(directory: Path) -> dict[str, dict[str, str]]:
    """sha256 of every shard, per split: what `checked_shards` holds the files to."""
    return {
        split: {
            shard.name: _sha256(shard) for shard in sorted(directory.glob(f"{split}/*.parquet"))
        }
        for split in SPLITS
    }


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise DataError("file not found", path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
