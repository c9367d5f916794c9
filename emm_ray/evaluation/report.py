"""The evaluation report: `report.json` (one row per model and task) and `report.md`.

`report.json` is a JSON list of rows `{model, kind, task, auc, logloss, rows}` with
`kind` one of `fused | pool | baseline` and `auc` `null` where undefined. `report.md`
shows the same numbers as one table, a row per model and an AUC / log-loss column pair
per task, so fused, pool members and baselines read side by side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, TypeAdapter

from emm_ray.config import StrictModel

ModelKind = Literal["fused", "pool", "baseline"]
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


class ReportRow(StrictModel):
    """Test metrics of one model on one task."""

    model: str
    kind: ModelKind
    task: str
    auc: float | None
    logloss: float
    rows: int = Field(ge=0)


_ROWS = TypeAdapter(list[ReportRow])


def render_markdown(rows: Sequence[ReportRow], title: str = "Evaluation", notes: str = "") -> str:
    """A table: one line per model (fused first, then pool, then baselines), columns per task."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    order = {"fused": 0, "pool": 1, "baseline": 2}
    models = sorted(dict.fromkeys((r.model, r.kind) for r in rows), key=lambda mk: (order[mk[1]],))
    cells = {(r.model, r.task): r for r in rows}
    header = ["model", "kind", *(f"{kind} {t}" for t in tasks for kind in ("AUC", "logloss"))]
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, kind in models:
        values = []
        for task in tasks:
            row = cells.get((model, task))
            values += (
                ["", ""]
                if row is None
                else ["n/a" if row.auc is None else f"{row.auc:.4f}", f"{row.logloss:.4f}"]
            )
        lines.append("| " + " | ".join([model, kind, *values]) + " |")
    scored = {r.rows for r in rows}
    lines += ["", f"Rows scored: {', '.join(str(n) for n in sorted(scored))}."]
    return "\n".join(lines) + "\n"


def write_report(
    rows: Sequence[ReportRow], directory: str | Path, title: str = "Evaluation", notes: str = ""
) -> tuple[Path, Path]:
    """Write `report.json` and `report.md` into `directory`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / REPORT_JSON, directory / REPORT_MD
    json_path.write_text(json.dumps([r.model_dump() for r in rows], indent=1))
    md_path.write_text(render_markdown(rows, title, notes))
    return json_path, md_path


def read_report(path: str | Path) -> list[ReportRow]:
    """Rows of a `report.json` (or of the one in a directory), validated."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    return _ROWS.validate_json(path.read_text())
