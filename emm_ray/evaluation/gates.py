"""Gate report: which components and tasks each task used, level by level.

For every level, task and gate (`task`: own components; `fusion`: other tasks'
components, or tasks in the reference variant; `plugin`: members added later) and every
candidate: the mean weight it received over the scored rows (0 in rows where it was not
selected) and the fraction of rows that selected it. Written as `gates.json`, a
markdown table `gates.md`, and a heatmap `gates.png` (one panel per gate kind), drawn on
matplotlib's Agg canvas directly (no pyplot, no global backend state, safe in workers).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emm_ray.config import StrictModel
from emm_ray.data.batch import Batch
from emm_ray.errors import EmmError
from emm_ray.fusion.model import EMMModel


class GateRow(StrictModel):
    level: int
    task: str
    gate: str
    candidate: str
    mean_weight: float
    selection_rate: float


@torch.inference_mode()
def summarize_gates(model: EMMModel, batches: Iterable[Batch]) -> list[GateRow]:
    """Average every gate's weights and selections over all rows of `batches`."""
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    sums: dict[tuple[int, str, str], list] = {}
    rows = 0
    try:
        for batch in batches:
            batch = batch.to(device)
            _, records = model.run(batch.sparse, batch.dense, trace=True)
            rows += len(batch)
            for record in records:
                key = (record.level, record.task, record.gate)
                weight = record.weights.double().sum(0).cpu()
                chosen = record.selected.double().sum(0).cpu()
                if key in sums:
                    sums[key][1] += weight
                    sums[key][2] += chosen
                else:
                    sums[key] = [record.candidates, weight, chosen]
    finally:
        model.train(was_training)
    if rows == 0:
        raise EmmError("the gate report needs at least one row of data")
    return [
        GateRow(
            level=level,
            task=task,
            gate=gate,
            candidate=name,
            mean_weight=float(weight[i]) / rows,
            selection_rate=float(chosen[i]) / rows,
        )
        for (level, task, gate), (names, weight, chosen) in sums.items()
        for i, name in enumerate(names)
    ]


def render_gate_markdown(rows: Sequence[GateRow]) -> str:
    lines = [
        "# Gate report",
        "",
        "| level | task | gate | candidate | mean weight | selected |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.level} | {r.task} | {r.gate} | {r.candidate} | {r.mean_weight:.3f} | "
        f"{r.selection_rate:.1%} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def plot_gate_heatmap(rows: Sequence[GateRow], path: str | Path) -> Path:
    """One heatmap per gate kind: rows = (level, task), columns = candidates, mean weights."""
    kinds = list(dict.fromkeys(r.gate for r in rows))
    figure = Figure(figsize=(4.5 * len(kinds) + 1, 1.2 + 0.45 * _max_rows(rows)))
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(kinds), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        selected = [r for r in rows if r.gate == kind]
        ylabels = list(dict.fromkeys(f"L{r.level} {r.task}" for r in selected))
        xlabels = list(dict.fromkeys(r.candidate for r in selected))
        grid = np.full((len(ylabels), len(xlabels)), np.nan)
        for r in selected:
            grid[ylabels.index(f"L{r.level} {r.task}"), xlabels.index(r.candidate)] = r.mean_weight
        image = axis.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (y, x), value in np.ndenumerate(grid):
            if not np.isnan(value):
                axis.text(x, y, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
        axis.set_xticks(range(len(xlabels)), xlabels, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
        axis.set_title(f"{kind} gate: mean weight")
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    path = Path(path)
    canvas.print_png(str(path))
    return path


def write_gate_report(rows: Sequence[GateRow], directory: str | Path) -> list[Path]:
    """`gates.json`, `gates.md` and `gates.png` in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "gates.json", directory / "gates.md"
    json_path.write_text(json.dumps([r.model_dump() for r in rows], indent=1))
    md_path.write_text(render_gate_markdown(rows))
    return [json_path, md_path, plot_gate_heatmap(rows, directory / "gates.png")]


def _max_rows(rows: Sequence[GateRow]) -> int:
    return max(
        len({(r.level, r.task) for r in rows if r.gate == kind}) for kind in {r.gate for r in rows}
    )
