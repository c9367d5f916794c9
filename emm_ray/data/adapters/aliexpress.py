"""AliExpress search logs (Li et al., CIKM 2020) in the torch-rechub CSV form.

Columns: `search_id`, `categorical_1..16` (integer ids), `numerical_1..63` (already
normalised floats), `click`, `conversion`. `search_id` groups impressions of one
query and is not a feature. Tasks: `ctr` = click; `ctcvr` = click AND conversion.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from emm_ray.data.adapters.csvread import iter_csv
from emm_ray.data.adapters.header import match_header
from emm_ray.data.layout import DatasetLayout, DenseSpec
from emm_ray.data.schema import Task

SPARSE = tuple(f"categorical_{i}" for i in range(1, 17))
DENSE = tuple(f"numerical_{i}" for i in range(1, 64))
COLUMNS = ("search_id", *SPARSE, *DENSE, "click", "conversion")
TASKS: tuple[Task, ...] = (
    Task(name="ctr", description="click"),
    Task(name="ctcvr", description="click and conversion"),
)
LAYOUT = DatasetLayout("aliexpress", SPARSE, tuple(DenseSpec(n) for n in DENSE), TASKS)


def layout(path: Path) -> DatasetLayout:
    """AliExpress has one layout whatever the file."""
    return LAYOUT


def iter_chunks(path: Path) -> Iterator[pa.Table]:
    """Validated raw tables (see `DatasetLayout.raw_schema`), in file order."""
    path = Path(path)
    _, header = match_header(path, "AliExpress", {"torch-rechub": COLUMNS})
    schema = LAYOUT.raw_schema()
    for chunk in iter_csv(path, header, header=True):
        columns = {name: chunk.strings(name) for name in SPARSE}
        columns |= {name: chunk.floats(name) for name in DENSE}
        click = chunk.label("click", "1", "0")
        conversion = chunk.label("conversion", "1", "0")
        columns["ctr"] = click
        columns["ctcvr"] = pc.cast(pc.and_(pc.equal(click, 1), pc.equal(conversion, 1)), pa.int8())
        yield pa.table(columns, schema=schema)
