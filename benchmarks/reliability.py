"""The reliability job: run the fault, load and hostile-input tests and record their figures.

    python benchmarks/reliability.py            # = python -m pytest -m reliability, plus the
                                                #   serving fault tests of the default run

Runs pytest once with `EMM_FIGURES_LOG` set; every test that breaks something on
purpose records what it did through the `figures_log` fixture (tests/conftest.py):
faults injected and survived, requests generated and their status codes, load held.
Writes `benchmarks/results/reliability.md` and `reliability.json`, one object with the
totals (`faults_injected`, `faults_survived`, `requests_generated`, `responses_5xx`,
`replica_restarts` under hostile input, `duplicate_runs`, `duplicate_versions`; `null`
where no test of this run measures it) and every test's own record under `checks`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from figures import run_pytest  # run as a script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = [
    "tests/serve/test_http.py",
    "tests/train/test_faults.py",
    "tests/pipelines/test_interrupted.py",
]
TOTALS = (
    "faults_injected",
    "faults_survived",
    "requests_generated",
    "responses_5xx",
    "duplicate_runs",
    "duplicate_versions",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=DEFAULT_TESTS, help="test paths to run")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/reliability.md")
    args = parser.parse_args()
    run = run_pytest(["-m", "reliability or not benchmark", *args.paths])
    summary = summarise(run.records)
    summary |= {
        "pytest_exit_code": run.exit_code,
        "wall_s": run.wall_s,
        "load_before": run.load_before,
        "load_after": run.load_after,
        "checks": run.records,
    }
    args.output.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    args.output.write_text(render(summary, args.paths))
    print(render(summary, args.paths))
    sys.exit(run.exit_code)


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the checks; a figure no check reported stays `None` (not measured)."""
    totals: dict[str, Any] = {}
    for key in TOTALS:
        values = [r[key] for r in records if key in r]
        totals[key] = sum(values) if values else None
    hostile = [r["replica_restarts"] for r in records if "requests_generated" in r]
    totals["replica_restarts"] = sum(hostile) if hostile else None
    return totals


def render(summary: dict[str, Any], paths: list[str]) -> str:
    def shown(value: Any) -> str:
        return "not measured by this run" if value is None else f"{value:,}"

    lines = [
        "# Reliability: faults injected, hostile input, load",
        "",
        f"`python benchmarks/reliability.py` ({', '.join(paths)}), "
        f"{time.strftime('%Y-%m-%d %H:%M')}, pytest exit code {summary['pytest_exit_code']}, "
        f"{summary['wall_s']} s; load average before / after: {summary['load_before']} / "
        f"{summary['load_after']}. The JSON twin holds every check's own record.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {key} | {shown(summary[key])} |" for key in (*TOTALS, "replica_restarts")),
        "",
        "`replica_restarts` counts replicas that restarted under hostile input (none may); "
        "the replica-kill check restarts one on purpose and counts it as a fault.",
        "",
        "## Checks",
        "",
    ]
    for record in summary["checks"]:
        figures = {k: v for k, v in record.items() if k not in ("test", "check", "levels")}
        lines.append(f"- **{record.get('check', record['test'])}**: {json.dumps(figures)}")
        for level in record.get("levels", []):
            lines.append(
                f"  - {level['concurrency']} clients: {level['requests_per_s']} requests/s, "
                f"p99 {level['p99_ms']} ms, {level['errors']} errors"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
