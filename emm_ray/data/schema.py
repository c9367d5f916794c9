"""The feature schema: one object describing inputs and tasks, shared by every stage.

Encoded data (parquet shards) stores each sparse field as an int64 index column, each
dense field as a scaled float32 column, and each task's label as a float32 column named
after the task. Index 0 of every sparse field is the out-of-vocabulary bucket, so a
category never seen in the training split still has an embedding row.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import model_validator

from emm_ray.config import StrictModel
from emm_ray.errors import SchemaMismatchError

OOV_INDEX = 0
SCHEMA_FILE = "schema.json"


class SparseField(StrictModel):
    """A categorical feature; `vocabulary[i]` is encoded as index `i + 1`."""

    name: str
    vocabulary: tuple[str, ...]

    @property
    def cardinality(self) -> int:
        """Embedding rows needed, the OOV bucket included."""
        return len(self.vocabulary) + 1


class DenseField(StrictModel):
    """A numeric feature, scaled as `(transform(x) - mean) / std`, fitted on train only."""

    name: str
    transform: Literal["identity", "log1p"] = "identity"
    mean: float = 0.0
    std: float = 1.0


class Task(StrictModel):
    """A binary prediction task; the label column in encoded data has the task's name."""

    name: str
    kind: Literal["binary"] = "binary"
    description: str = ""


class FeatureSchema(StrictModel):
    """Fields and tasks of one dataset, with their fitted vocabularies and scalers."""

    dataset: str
    sparse: tuple[SparseField, ...]
    dense: tuple[DenseField, ...]
    tasks: tuple[Task, ...]

    @model_validator(mode="after")
    def _names_are_unique(self) -> FeatureSchema:
        names = [f.name for f in self.sparse] + [f.name for f in self.dense]
        names += [t.name for t in self.tasks]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"schema names must be unique across fields and tasks: {duplicated}")
        if not self.tasks:
            raise ValueError("schema needs at least one task")
        return self

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def dense_names(self) -> list[str]:
        return [f.name for f in self.dense]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def cardinalities(self) -> list[int]:
        return [f.cardinality for f in self.sparse]

    @property
    def num_features(self) -> int:
        return len(self.sparse) + len(self.dense)

    def task_index(self, task: str) -> int:
        """Position of `task` in label tensors; a clear error for an unknown task."""
        try:
            return self.task_names.index(task)
        except ValueError:
            raise SchemaMismatchError(
                f"unknown task {task!r}; dataset {self.dataset!r} has tasks {self.task_names}"
            ) from None

    @property
    def hash(self) -> str:
        """Stable fingerprint of the encoding: a model trained on one schema refuses another."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def layout_hash(self) -> str:
        """Fingerprint of what the data *is* (dataset, field names, tasks), not of how it
        was encoded: a refreshed vocabulary keeps it, another dataset or task set does not."""
        layout = {
            "dataset": self.dataset,
            "sparse": self.sparse_names,
            "dense": self.dense_names,
            "tasks": self.task_names,
        }
        canonical = json.dumps(layout, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def check_compatible(self, other_hash: str, what: str) -> None:
        """Raise if `what` (a model, an artifact) was built for a different schema."""
        if other_hash != self.hash:
            raise SchemaMismatchError(
                f"{what} was built for schema {other_hash}, but the data has schema "
                f"{self.hash} (dataset {self.dataset!r}); retrain it on this data or "
                "use the data it was trained on"
            )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SCHEMA_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSchema:
        """Load from a `schema.json` file or a directory holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / SCHEMA_FILE
        return cls.model_validate_json(path.read_text())

    def encode(self, raw: pa.Table) -> pa.Table:
        """Turn raw feature values (strings / numbers) and 0/1 labels into model inputs.

        Raw tables come from the dataset adapters, which have already validated types,
        so this is pure vectorised arithmetic; unseen categories go to `OOV_INDEX`.
        """
        columns = self.encode_features(raw)
        for task in self.tasks:
            columns[task.name] = pc.cast(raw.column(task.name), pa.float32())
        return pa.table(columns)

    def encode_features(self, raw: pa.Table) -> dict[str, pa.Array]:
        """The feature columns of `encode` (no labels): what scoring unlabeled rows needs."""
        columns: dict[str, pa.Array] = {}
        for field in self.sparse:
            values = pc.cast(raw.column(field.name), pa.string())
            index = pc.index_in(values, value_set=pa.array(field.vocabulary, pa.string()))
            columns[field.name] = pc.add(pc.fill_null(index, -1), 1).cast(pa.int64())
        for field in self.dense:
            x = transform_dense(
                raw.column(field.name).to_numpy(zero_copy_only=False), field.transform
            )
            columns[field.name] = pa.array(((x - field.mean) / field.std).astype(np.float32))
        return columns


def transform_dense(values: np.ndarray, transform: Literal["identity", "log1p"]) -> np.ndarray:
    """The pre-scaling transform as float64; log1p clips negatives to 0 (money amounts)."""
    x = np.asarray(values, dtype=np.float64)
    return np.log1p(np.maximum(x, 0.0)) if transform == "log1p" else x


def fit_dense_field(
    name: str, values: np.ndarray, transform: Literal["identity", "log1p"]
) -> DenseField:
    """Fit a dense scaler on training values; a constant column keeps std 1."""
    x = transform_dense(values, transform)
    return dense_field_from_moments(name, transform, float(x.mean()), float(x.var()))


def dense_field_from_moments(
    name: str, transform: Literal["identity", "log1p"], mean: float, variance: float
) -> DenseField:
    """A dense scaler from moments of the transformed training values (e.g. streamed).

    Rounded to 12 significant digits: moments summed in other chunk sizes differ in the
    last bits, and the schema (and its hash) must not depend on how data was chunked.
    """
    std = math.sqrt(max(variance, 0.0))
    return DenseField(
        name=name,
        transform=transform,
        mean=_round(mean),
        std=_round(std) if std > 1e-12 and math.isfinite(std) else 1.0,
    )


def _round(value: float) -> float:
    return float(f"{value:.12g}")


def fit_sparse_field(
    name: str, values: pa.Array | pa.ChunkedArray, min_count: int = 1
) -> SparseField:
    """Vocabulary of training values seen at least `min_count` times, most frequent first."""
    counts = pc.value_counts(pc.drop_null(pc.cast(values, pa.string())))
    return sparse_field_from_counts(name, counts.field("values"), counts.field("counts"), min_count)


def sparse_field_from_counts(
    name: str,
    categories: pa.Array,
    counts: pa.Array,
    min_count: int = 1,
    max_ids: int | None = None,
) -> SparseField:
    """Vocabulary from per-category training counts (e.g. summed over streamed chunks):
    categories seen at least `min_count` times, at most the `max_ids` most frequent.

    Most frequent first, ties broken by the category string, so the same counts always
    give the same indices (and the same schema hash).
    """
    table = pa.table({"category": pc.cast(categories, pa.string()), "count": counts})
    table = table.filter(pc.greater_equal(table.column("count"), min_count))
    order = pc.sort_indices(table, sort_keys=[("count", "descending"), ("category", "ascending")])
    if max_ids is not None:
        order = order[:max_ids]
    return SparseField(
        name=name, vocabulary=tuple(table.column("category").take(order).to_pylist())
    )
