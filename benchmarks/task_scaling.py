"""Task scaling (the EMM paper's task-number experiment) on real census tasks.

For each task count T, the first T tasks of `TASKS` (real census labels,
docs/census_tasks.md; every chosen task's source columns leave the features, so the
feature set shrinks as T grows), one member per architecture in `--members` per task,
fused by the shipped model (`emm-pool-stack`: `configs/fusion/emm.yaml`, which starts at
the stacking over every member's logit) with `top_k` below the number of other-task
candidates, against that stacking alone and the best converged baseline among
`--baselines`.
Each T is one `fusion_benchmark.py` run (same training rules: early stopping, caps that
must not bind, per-task choice after training), resumable like it; this script then
writes `benchmarks/results/task_scaling.md`, its JSON twin and `task_scaling.png`.

    python benchmarks/task_scaling.py --counts 2 3 4 6 8 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from fusion_benchmark import RUNS, paired_differences, read_rows  # noqa: E402

TASKS = (
    "income",
    "never_married",
    "education_bachelors",
    "worked_all_year",
    "capital_income",
    "foreign_born",
    "self_employed",
    "school_enrolled",
)
# The shipped fused model and the ensemble it starts from (fusion_benchmark.py's names).
FUSED, ENSEMBLE = "emm-pool-stack", "ensemble-pool-stacked"


def run_count(count: int, args: argparse.Namespace) -> Path:
    """One fusion benchmark run for the first `count` tasks; returns its results file."""
    name = f"task_scaling_T{count}"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "fusion_benchmark.py"),
        "--dataset",
        "census",
        "--tasks",
        *TASKS[:count],
        "--members",
        *args.members,
        "--top-k",
        str(args.top_k),
        "--variants",
        FUSED,
        "--baselines",
        *args.baselines,
        "--seeds",
        *map(str, args.seeds),
        "--name",
        name,
        "--work-dir",
        str(args.work_dir),
        "--runs-dir",
        str(args.runs_dir),
        "--output",
        str(args.work_dir / f"{name}.md"),
    ]
    subprocess.run(command, check=True)
    return args.runs_dir / f"{name}.jsonl"


def summarize(count: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task: the fused model, its ensemble and the best baseline (by mean test AUC), with
    the std over seeds and the fused model's paired differences (95 % t-interval when >= 2
    seeds)."""
    out = []
    for task in TASKS[:count]:

        def aucs(model: str, task: str = task) -> list[float]:
            return [r["auc"] for r in rows if r["model"] == model and r["task"] == task]

        def mean(model: str) -> float | None:
            return statistics.mean(aucs(model)) if aucs(model) else None

        def std(model: str) -> float:
            return statistics.stdev(aucs(model)) if len(aucs(model)) > 1 else 0.0

        def paired(against: str | None, task: str = task) -> dict[str, Any] | None:
            return paired_differences(rows, FUSED, against).get(task) if against else None

        baselines = {r["model"] for r in rows if r["kind"] == "baseline" and r["task"] == task}
        scored = {b: mean(b) for b in baselines}
        best = max(scored, key=lambda b: scored[b] or 0.0) if scored else None
        emm = [r for r in rows if r["model"] == FUSED and r["task"] == task]
        out.append(
            {
                "tasks": count,
                "task": task,
                "emm_auc": mean(FUSED),
                "emm_auc_std": std(FUSED),
                "ensemble_auc": mean(ENSEMBLE),
                "ensemble_auc_std": std(ENSEMBLE),
                "emm_minus_ensemble": paired(ENSEMBLE),
                "best_baseline": best,
                "best_baseline_auc": scored.get(best) if best else None,
                "best_baseline_auc_std": std(best) if best else None,
                "emm_minus_best_baseline": paired(best),
                "seeds": sorted({r["seed"] for r in emm}),
                "fusion_trainable_params": emm[0]["trainable_parameters"] if emm else None,
                "fusion_wall_s": statistics.mean(r["wall_seconds"] for r in emm) if emm else None,
                "fusion_best_epochs": [r["best_epoch"] for r in emm],
            }
        )
    return out


def auc(row: dict[str, Any], key: str) -> str:
    """Mean, and ± std when there is more than one seed."""
    text = f"{row[key]:.4f}"
    return text + (f" ± {row[key + '_std']:.4f}" if len(row["seeds"]) > 1 else "")


def difference(mean: float, paired: dict[str, Any] | None) -> str:
    """Mean difference, and its paired 95 % interval over seeds when there is one."""
    text = f"{mean:+.4f}"
    return text + (f" [{paired['low']:+.4f}, {paired['high']:+.4f}]" if paired else "")


def render(summary: list[dict[str, Any]], notes: list[str]) -> str:
    lines = ["# Task scaling: real census tasks", "", *notes, ""]
    lines.append(
        "| tasks | task | emm | stacked ensemble | emm - ensemble | best baseline | "
        "emm - best baseline | fusion trainable params | fusion wall s | best epochs |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        gap = difference(r["emm_auc"] - r["ensemble_auc"], r["emm_minus_ensemble"])
        vs = difference(r["emm_auc"] - r["best_baseline_auc"], r["emm_minus_best_baseline"])
        lines.append(
            f"| {r['tasks']} | {r['task']} | {auc(r, 'emm_auc')} | {auc(r, 'ensemble_auc')} | "
            f"{gap} | {r['best_baseline']} {auc(r, 'best_baseline_auc')} | {vs} | "
            f"{r['fusion_trainable_params']:,} | {r['fusion_wall_s']:.0f} | "
            f"{' '.join(map(str, r['fusion_best_epochs']))} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    counts = sorted({r["tasks"] for r in summary})

    def mean_over_tasks(key: str, count: int) -> float:
        return statistics.mean(r[key] for r in summary if r["tasks"] == count)

    figure = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(figure)
    gains, cost = figure.subplots(1, 2)
    for label, other in (
        ("vs stacked ensemble", "ensemble_auc"),
        ("vs best baseline", "best_baseline_auc"),
    ):
        gains.plot(
            counts,
            [
                statistics.mean(r["emm_auc"] - r[other] for r in summary if r["tasks"] == c)
                for c in counts
            ],
            marker="o",
            label=label,
        )
    gains.axhline(0.0, color="grey", linewidth=0.8)
    gains.set_xlabel("tasks fused")
    gains.set_ylabel("emm test AUC gain (mean over tasks)")
    gains.legend(fontsize=8)
    cost.plot(counts, [mean_over_tasks("fusion_wall_s", c) for c in counts], marker="o")
    cost.set_xlabel("tasks fused")
    cost.set_ylabel("fusion wall time, s")
    twin = cost.twinx()
    twin.plot(
        counts,
        [mean_over_tasks("fusion_trainable_params", c) / 1e6 for c in counts],
        marker="s",
        color="tab:orange",
    )
    twin.set_ylabel("fusion trainable params, M", color="tab:orange")
    figure.tight_layout()
    figure.canvas.print_png(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 3, 4, 6, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--members", nargs="+", default=["mlp", "deepfm", "wide_deep"])
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--baselines", nargs="+", default=["mmoe", "ple"])
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "emm-bench" / "fusion"
    )
    parser.add_argument("--runs-dir", type=Path, default=RUNS)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    summary = []
    for count in args.counts:
        results = args.runs_dir / f"task_scaling_T{count}.jsonl"
        if not args.render_only:
            results = run_count(count, args)
        summary += summarize(count, read_rows(results))
    notes = [
        "Data: real UCI Census-Income (KDD) training file, validation/test carved 10 % / 10 % "
        f"(stratified on the joint label); tasks in order {', '.join(TASKS)}; with T tasks "
        "the source columns of those T tasks leave every model's features.",
        f"Pool: per task one {', '.join(args.members)} (embed 16); `emm` = the shipped "
        f"configs/fusion/emm.yaml (`{FUSED}` in fusion_benchmark.py) with top_k {args.top_k} "
        f"(of {len(args.members)} x (T - 1) other-task candidates); 'stacked ensemble' = "
        f"its start, `{ENSEMBLE}` (a logistic regression per task on every member's logit). "
        "Baselines: "
        f"{', '.join(args.baselines)} (library defaults, converged); 'best baseline' is the "
        "one with the higher mean test AUC on that task. Training as fusion_census.md "
        "(early stopping, patience 3, caps 40 / 30, lr 2e-3 / 3e-4); 1 torch thread per "
        "process on a shared 2-core machine. Seeds: "
        f"{' '.join(map(str, sorted({s for r in summary for s in r['seeds']})))}; with more "
        "than one, AUC is mean ± std over seeds and a difference is its mean with the "
        "paired 95 % t-interval.",
    ]
    output = REPO / "benchmarks" / "results" / "task_scaling.md"
    output.write_text(render(summary, notes))
    output.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, output.with_suffix(".png"))
    print(output.read_text())


if __name__ == "__main__":
    main()
