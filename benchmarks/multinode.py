"""The multi-node run, recorded: where every stage ran, and the fused AUCs against one node.

    python benchmarks/multinode.py      # = python -m pytest -m multinode, plus the figures

Runs `tests/cluster/test_multinode.py` (two Ray nodes on this machine, moto's S3 server,
an `mlflow server`; `ray job submit` of configs/multinode.yaml) with `EMM_FIGURES_LOG` set,
and writes what the test recorded to `benchmarks/results/multinode.md` and `.json`:
the node (head / worker) of each pool member, fusion worker, trial and Serve replica,
the seconds of each stage, the fused test AUC per task on two nodes and on one, and
how many objects each prefix of the object store holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from figures import run_pytest  # run as a script

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/multinode.md")
    args = parser.parse_args()
    run = run_pytest(["-m", "multinode", "tests/cluster"])
    result = {
        "pytest_exit_code": run.exit_code,
        "wall_s": run.wall_s,
        "load_before": run.load_before,
        "load_after": run.load_after,
        "runs": run.records,
    }
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.output.write_text(render(result))
    print(render(result))
    sys.exit(run.exit_code)


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Multi-node run (two Ray nodes on one machine, S3-compatible store, MLflow server)",
        "",
        "`python benchmarks/multinode.py`: `ray job submit` of `configs/multinode.yaml` to a",
        "head and a worker node of 1 CPU each (tests/cluster/test_multinode.py); prepared data,",
        "checkpoints and model artifacts only in the object store. Then the same config on one",
        "local node (prepare, pool, fuse, evaluate) for the AUC comparison.",
        "",
        f"pytest exit code {result['pytest_exit_code']}, {result['wall_s']} s, load average "
        f"{result['load_before']} before, {result['load_after']} after.",
    ]
    for run in result["runs"]:
        placement = run["placement"]
        lines += ["", "| work | nodes it ran on |", "| --- | --- |"]
        lines += [f"| {work} | {', '.join(nodes)} |" for work, nodes in placement.items()]
        lines += ["", "| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in run["stage_seconds"].items()]
        lines += ["", "| task | fused test AUC, two nodes | one node | difference |"]
        lines += ["| --- | ---: | ---: | ---: |"]
        for task, two in run["fused_auc_two_nodes"].items():
            one = run["fused_auc_one_node"][task]
            lines.append(f"| {task} | {two:.4f} | {one:.4f} | {two - one:+.4f} |")
        objects = ", ".join(f"`{prefix}` {count}" for prefix, count in run["objects"].items())
        lines += ["", f"Objects in the store after the run: {objects}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
