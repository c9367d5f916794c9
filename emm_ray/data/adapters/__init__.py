"""Readers for the real raw formats, and where their files live by default.

Every adapter turns a raw file into validated *raw tables* in its `DatasetLayout`
(sparse as strings, dense as float64, one 0/1 int8 column per task), streamed in
blocks of a few MB so `prepare` never holds a whole file in memory. A dataset whose
labels can be defined from its columns (census) lets a config choose its tasks; the
others have one fixed task set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from emm_ray.data.adapters import ali_ccp, aliexpress, census
from emm_ray.data.layout import DatasetLayout
from emm_ray.errors import ConfigError


@dataclass(frozen=True)
class Adapter:
    """How to read one dataset's raw files; `default_files` are relative to `data_dir()`.

    `task_names` are the tasks a config may choose from (`DatasetConfig.tasks`), empty
    for a fixed task set; an adapter with a choice takes the chosen names as a second
    argument of `read_layout` and `read_chunks`.
    """

    dataset: str
    read_layout: Callable[..., DatasetLayout]
    read_chunks: Callable[..., Iterator[pa.Table]]
    default_files: dict[str, str]
    task_names: tuple[str, ...] = ()

    def check_tasks(self, tasks: Sequence[str] | None) -> tuple[str, ...] | None:
        """`tasks` as a tuple (None: the dataset's default tasks), or a `ConfigError`."""
        if tasks is None:
            return None
        tasks = tuple(tasks)
        if not self.task_names:
            choosable = sorted(name for name, a in ADAPTERS.items() if a.task_names)
            raise ConfigError(
                f"tasks: dataset {self.dataset!r} has a fixed task set; leave `tasks` unset "
                f"(datasets with a choice of tasks: {choosable})"
            )
        unknown = [name for name in tasks if name not in self.task_names]
        if unknown:
            raise ConfigError(
                f"tasks: unknown {self.dataset} task(s) {unknown}; "
                f"valid names: {list(self.task_names)}"
            )
        repeated = sorted({name for name in tasks if tasks.count(name) > 1})
        if repeated:
            raise ConfigError(f"tasks: {repeated} listed more than once")
        if not tasks:
            raise ConfigError("tasks: choose at least one task, or leave `tasks` unset")
        return tasks

    def layout(self, path: str | Path, tasks: Sequence[str] | None = None) -> DatasetLayout:
        """The layout of `path` for the chosen tasks (None: the default tasks)."""
        chosen = self.check_tasks(tasks)
        if chosen is None:
            return self.read_layout(Path(path))
        return self.read_layout(Path(path), chosen)

    def iter_chunks(
        self, path: str | Path, tasks: Sequence[str] | None = None
    ) -> Iterator[pa.Table]:
        """Validated raw tables of `path` for the chosen tasks, in file order."""
        chosen = self.check_tasks(tasks)
        if chosen is None:
            return self.read_chunks(Path(path))
        return self.read_chunks(Path(path), chosen)

    def read(self, path: str | Path, tasks: Sequence[str] | None = None) -> pa.Table:
        """The whole file as one raw table (small files; prepare streams instead)."""
        return pa.concat_tables(self.iter_chunks(path, tasks))


ADAPTERS: dict[str, Adapter] = {
    "census": Adapter(
        "census",
        census.layout,
        census.iter_chunks,
        {"train": "census-income/census-income.data.gz"},
        census.TASK_NAMES,
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
