"""A dataset's field layout: which raw columns are sparse, dense (and how scaled), and tasks.

Adapters and synthetic generators both produce *raw tables* in this layout (sparse
fields as strings, dense fields as float64, one 0/1 int8 column per task), so every
later step (fitting vocabularies, encoding, splitting) is the same for real and
synthetic data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from emm_ray.data.schema import Task

Transform = Literal["identity", "log1p"]


@dataclass(frozen=True)
class DenseSpec:
    """A dense column and the transform applied before standard scaling."""

    name: str
    transform: Transform = "identity"


@dataclass(frozen=True)
class DatasetLayout:
    """Fields and tasks of one raw format; `dataset` becomes the schema's dataset name."""

    dataset: str
    sparse: tuple[str, ...]
    dense: tuple[DenseSpec, ...]
    tasks: tuple[Task, ...]

    @property
    def dense_names(self) -> list[str]:
        return [d.name for d in self.dense]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def num_features(self) -> int:
        return len(self.sparse) + len(self.dense)

    def raw_schema(self) -> pa.Schema:
        """Arrow schema of the raw tables adapters and generators yield."""
        return pa.schema(
            [pa.field(n, pa.string(), nullable=False) for n in self.sparse]
            + [pa.field(n, pa.float64(), nullable=False) for n in self.dense_names]
            + [pa.field(n, pa.int8(), nullable=False) for n in self.task_names]
        )

    def renamed(self, dataset: str) -> DatasetLayout:
        """The same fields under another dataset name (e.g. `census-synthetic`)."""
        return DatasetLayout(dataset, self.sparse, self.dense, self.tasks)
