"""`ray start --head` + `ray job submit` of the whole pipeline, as a cluster user runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from ray._private.utils import get_ray_address_file

from tests.conftest import REPO_ROOT

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_address_file() -> str | None:
    """What Ray's current-cluster file (read by `ray status`, `serve run`...) says now."""
    path = Path(get_ray_address_file(None))
    return path.read_text() if path.is_file() else None


class RayHead(NamedTuple):
    address: str
    address_file_before: str | None


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[RayHead]:
    """A `ray start --head` cluster of its own; stopped by signalling its process group,
    since `ray stop` would also kill every other Ray on the machine. The job's `python`
    is looked up on the head's PATH, so this interpreter's directory goes first.

    Its own `--temp-dir` (short: Unix socket paths are limited to 107 bytes) keeps its
    session files and its current-cluster address file out of Ray's default one, which
    would otherwise name this dead head after the test and make a later `serve run`
    attach to it and hang.
    """
    before = _default_address_file()
    temp_dir = tempfile.mkdtemp(prefix="rayhead_", dir="/tmp")
    dashboard = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={_free_port()}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # The session cluster of the other tests holds Ray's default agent ports
            # (52365 and others): a second node on them has no job agent to submit to.
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
            f"--temp-dir={temp_dir}",
        ],
        stdout=(tmp_path / "head.log").open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_jobs_api(address, head)
        yield RayHead(address, before)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_jobs_api(address: str, head: subprocess.Popen, timeout_s: float = 120) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited with {head.returncode}")
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception:  # noqa: BLE001 - the dashboard is still starting
            time.sleep(1)
    pytest.fail(f"Ray jobs API at {address} not up after {timeout_s} s")


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
    command = [
        RAY,
        "job",
        "submit",
        "--address",
        ray_head.address,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(REPO_ROOT),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "python",
        "pipelines/full.py",
        "--config",
        "configs/smoke.yaml",
        "--output",
        str(output),
    ]
    # The jobs API can answer before the head's job agent is up; Ray then refuses the
    # submission with "No available agent ... try again later", as a user would retry.
    deadline = time.monotonic() + 300  # minutes on a loaded 2-core machine
    while True:
        submitted = subprocess.run(command, capture_output=True, text=True, timeout=840)
        printed = submitted.stdout + submitted.stderr
        if "No available agent" not in printed or time.monotonic() > deadline:
            break
        time.sleep(2)
    printed = printed[-8000:]
    listed = JobSubmissionClient(ray_head.address).list_jobs()
    jobs = {job.submission_id: job.status for job in listed}
    assert submission_id in jobs, f"`ray job submit` exited {submitted.returncode}:\n{printed}"
    assert jobs[submission_id] == JobStatus.SUCCEEDED, printed

    rows = json.loads((output / "report.json").read_text())
    kinds = {row["kind"] for row in rows}
    assert kinds == {"fused", "pool", "baseline"}
    assert {row["task"] for row in rows} == {"income", "never_married"}
    fused = [r for r in rows if r["kind"] == "fused"]
    assert all(0.5 < r["auc"] <= 1.0 for r in fused)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["model_uri"] == "models:/emm-smoke@champion"
    assert "stage fuse done" in submitted.stdout
