"""Ray nodes for the tests that submit jobs as a cluster user does: a `ray start --head`
(with the jobs API) and, for multi-node tests, worker nodes joining it.

Each node gets its own agent ports and the head its own short `--temp-dir` (Unix socket
paths are limited to 107 bytes), which keeps its current-cluster address file out of
Ray's default one: a dead head named there would make a later `serve run` or
`ray.init()` attach to it and hang.
Nodes are stopped by signalling their process groups, since `ray stop` would also kill
every other Ray on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_head(
    log: Path,
    *,
    temp_dir: str,
    head_port: int,
    dashboard_port: int,
    num_cpus: float = 2,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """`ray start --head --block` with the jobs API on `dashboard_port`, GCS on
    `head_port`. The job's `python` is looked up on the head's PATH, so this
    interpreter's directory goes first."""
    command = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={head_port}",
        f"--num-cpus={num_cpus}",
        "--object-store-memory=300000000",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp_dir}",
        *_agent_ports(),
    ]
    return _spawn(command, log, env)


def start_worker(
    log: Path,
    *,
    temp_dir: str,
    head_port: int,
    num_cpus: float = 1,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """A worker node joining the head, with a temp dir of its own (`tests.cluster.
    worker_node`: `ray start` cannot add one while Ray is kept on 127.0.0.1)."""
    command = [
        sys.executable,
        "-m",
        "tests.cluster.worker_node",
        f"--address=127.0.0.1:{head_port}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus}",
        *_agent_ports(),
    ]
    return _spawn(command, log, env)


def _agent_ports() -> list[str]:
    """Ports of the node's agents: the session cluster of the other tests holds Ray's
    defaults (52365 and others), and a node on them would have no job agent."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


def _spawn(command: list[str], log: Path, env: dict[str, str] | None) -> subprocess.Popen:
    from tests.conftest import REPO_ROOT

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.Popen(
        command,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {}), "PATH": path},
        cwd=REPO_ROOT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def wait_for_jobs_api(address: str, head: subprocess.Popen, timeout_s: float = 120) -> None:
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


def submit(address: str, submission_id: str, runtime_env: dict, args: list[str]) -> str:
    """`ray job submit` of `python <args>` with this checkout as working dir; returns what
    it printed. The jobs API can answer before the head's job agent is up; Ray then
    refuses the submission with "No available agent ... try again later", and this
    retries as a user would."""
    from tests.conftest import REPO_ROOT

    command = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(REPO_ROOT),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "python",
        *args,
    ]
    deadline = time.monotonic() + 300  # minutes on a loaded 2-core machine
    while True:
        submitted = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        printed = submitted.stdout + submitted.stderr
        if "No available agent" not in printed or time.monotonic() > deadline:
            return printed
        time.sleep(2)
