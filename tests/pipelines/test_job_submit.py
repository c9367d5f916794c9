"""`ray start --head` + `ray job submit` of the whole pipeline, as a cluster user runs it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from ray._private.utils import get_ray_address_file

from tests.conftest import REPO_ROOT
from tests.ray_nodes import free_port, start_head, stop, submit, wait_for_jobs_api


class RayHead(NamedTuple):
    address: str
    address_file_before: str | None


def _default_address_file() -> str | None:
    """What Ray's current-cluster file (read by `ray status`, `serve run`...) says now."""
    path = Path(get_ray_address_file(None))
    return path.read_text() if path.is_file() else None


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[RayHead]:
    """A `ray start --head` cluster of its own (`tests.ray_nodes`)."""
    before = _default_address_file()
    temp_dir = tempfile.mkdtemp(prefix="rayhead_", dir="/tmp")
    dashboard = free_port()
    head = start_head(
        tmp_path / "head.log", temp_dir=temp_dir, head_port=free_port(), dashboard_port=dashboard
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_jobs_api(address, head)
        yield RayHead(address, before)
    finally:
        stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(900)
def test_job_submit_runs_the_pipeline_to_a_report(ray_head: RayHead, tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert _default_address_file() == ray_head.address_file_before, "the head left its address"
    output = tmp_path / "report"
    runtime_env = {
        "env_vars": {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
            "EMM_DATA_DIR": str(REPO_ROOT.parent / "shared" / "data"),
        }
    }
    submission_id = f"emm-test-{os.getpid()}"
    printed = submit(
        ray_head.address,
        submission_id,
        runtime_env,
        ["pipelines/full.py", "--config", "configs/smoke.yaml", "--output", str(output)],
    )[-8000:]
    listed = JobSubmissionClient(ray_head.address).list_jobs()
    jobs = {job.submission_id: job.status for job in listed}
    assert submission_id in jobs, f"`ray job submit` did not submit:\n{printed}"
    assert jobs[submission_id] == JobStatus.SUCCEEDED, printed

    rows = json.loads((output / "report.json").read_text())
    kinds = {row["kind"] for row in rows}
    assert kinds == {"fused", "pool", "baseline"}
    assert {row["task"] for row in rows} == {"income", "never_married"}
    fused = [r for r in rows if r["kind"] == "fused"]
    assert all(0.5 < r["auc"] <= 1.0 for r in fused)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["model_uri"] == "models:/emm-smoke@champion"
    assert "stage fuse done" in printed
