"""Run pytest with `EMM_FIGURES_LOG` set and collect what the tests recorded through the
`figures_log` fixture (tests/conftest.py), with the wall time and the load average
around the run: the common part of the benchmark scripts built on tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass
class FiguresRun:
    exit_code: int
    wall_s: int
    load_before: float
    load_after: float
    records: list[dict[str, Any]]


def run_pytest(args: list[str]) -> FiguresRun:
    """`python -m pytest <args>` in the repository, its tests' figures collected."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "figures.jsonl"
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        pytest = subprocess.run(
            [sys.executable, "-m", "pytest", *args],
            cwd=REPO,
            env={**os.environ, "EMM_FIGURES_LOG": str(log)},
        )
        lines = log.read_text().splitlines() if log.exists() else []
        return FiguresRun(
            exit_code=pytest.returncode,
            wall_s=round(time.perf_counter() - started),
            load_before=round(load_before, 2),
            load_after=round(os.getloadavg()[0], 2),
            records=[json.loads(line) for line in lines],
        )
