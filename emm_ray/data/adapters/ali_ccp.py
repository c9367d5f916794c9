"""Ali-CCP (Taobao click + purchase logs, ESMM paper) in its two preprocessed CSV forms.

- torch-rechub form (33 columns): `click, purchase`, 23 label-encoded sparse fields,
  8 dense fields already normalised to [0, 1].
- PaddleRec AITM form (20 columns): `click, purchase` and 18 sparse fields, no dense.

The form is recognised by the header. Tasks: `ctr` = click; `ctcvr` = purchase, i.e.
click *and* buy over all impressions. CVR (buy among clicks) is not a separate column:
it is `ctcvr` restricted to rows with `ctr == 1`, and p(CTCVR) = p(CTR) * p(CVR), which is
how ESMM-style models combine their towers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from emm_ray.data.adapters.csvread import iter_csv
from emm_ray.data.adapters.header import match_header
from emm_ray.data.layout import DatasetLayout, DenseSpec
from emm_ray.data.schema import Task

LABELS = ("click", "purchase")
TASKS: tuple[Task, ...] = (
    Task(name="ctr", description="click"),
    Task(name="ctcvr", description="purchase (click and buy); CVR = ctcvr among ctr == 1"),
)

RECHUB_SPARSE = (
    "101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207",
    "210", "216", "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14",
)  # fmt: skip
RECHUB_DENSE = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")
AITM_SPARSE = (
    "101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207",
    "216", "508", "509", "702", "853", "301",
)  # fmt: skip

RECHUB_LAYOUT = DatasetLayout(
    "ali_ccp", RECHUB_SPARSE, tuple(DenseSpec(n) for n in RECHUB_DENSE), TASKS
)
AITM_LAYOUT = DatasetLayout("ali_ccp", AITM_SPARSE, (), TASKS)

FORMS: dict[str, tuple[tuple[str, ...], DatasetLayout]] = {
    "torch-rechub": (LABELS + RECHUB_SPARSE + RECHUB_DENSE, RECHUB_LAYOUT),
    "paddlerec-aitm": (LABELS + AITM_SPARSE, AITM_LAYOUT),
}


def layout(path: Path) -> DatasetLayout:
    """The layout of the form whose header `path` has."""
    form, _ = match_header(Path(path), "Ali-CCP", {k: v[0] for k, v in FORMS.items()})
    return FORMS[form][1]


def iter_chunks(path: Path) -> Iterator[pa.Table]:
    """Validated raw tables (see `DatasetLayout.raw_schema`), in file order."""
    path = Path(path)
    form, header = match_header(path, "Ali-CCP", {k: v[0] for k, v in FORMS.items()})
    fields = FORMS[form][1]
    schema = fields.raw_schema()
    for chunk in iter_csv(path, header, header=True):
        columns = {name: chunk.strings(name) for name in fields.sparse}
        columns |= {name: chunk.floats(name) for name in fields.dense_names}
        columns["ctr"] = chunk.label("click", "1", "0")
        columns["ctcvr"] = chunk.label("purchase", "1", "0")
        yield pa.table(columns, schema=schema)
