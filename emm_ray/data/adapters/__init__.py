"""Readers for the real raw formats, and where their files live by default.

Every adapter turns a raw file into validated *raw tables* in its `DatasetLayout`
(sparse as strings, dense as float64, one 0/1 int8 column per task), streamed in
blocks of a few MB so `prepare` never holds a whole file in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from emm_ray.data.adapters import ali_ccp, aliexpress, census
from emm_ray.data.layout import DatasetLayout
from emm_ray.errors import ConfigError


@dataclass(frozen=True)
class Adapter:
    """How to read one dataset's raw files; `default_files` are relative to `data_dir()`."""

    dataset: str
    layout: Callable[[Path], DatasetLayout]
    iter_chunks: Callable[[Path], Iterator[pa.Table]]
    default_files: dict[str, str]

    def read(self, path: str | Path) -> pa.Table:
        """The whole file as one raw table (small files; prepare streams instead)."""
        return pa.concat_tables(self.iter_chunks(Path(path)))


ADAPTERS: dict[str, Adapter] = {
    "census": Adapter(
        "census",
        census.layout,
        census.iter_chunks,
        {"train": "census-income/census-income.data.gz"},
    ),
    "ali_ccp": Adapter(
        "ali_ccp",
        ali_ccp.layout,
        ali_ccp.iter_chunks,
        {
            "train": "ali-ccp/torch-rechub/ali_ccp_train_sample.csv",
            "validation": "ali-ccp/torch-rechub/ali_ccp_val_sample.csv",
        },
    ),
    "aliexpress": Adapter(
        "aliexpress",
        aliexpress.layout,
        aliexpress.iter_chunks,
        {"train": "aliexpress/torch-rechub/aliexpress_train_sample.csv"},
    ),
}


def get_adapter(dataset: str) -> Adapter:
    """The adapter for a base dataset name (`census`, `ali_ccp`, `aliexpress`)."""
    try:
        return ADAPTERS[dataset]
    except KeyError:
        raise ConfigError(f"unknown dataset {dataset!r}; known: {sorted(ADAPTERS)}") from None


def data_dir() -> Path:
    """`EMM_DATA_DIR`, else `../shared/data` beside the current directory or the repository."""
    if "EMM_DATA_DIR" in os.environ:
        return Path(os.environ["EMM_DATA_DIR"])
    candidates = [Path.cwd().parent / "shared" / "data"]
    candidates.append(Path(__file__).resolve().parents[4] / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), candidates[0])
