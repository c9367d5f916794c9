"""Two Ray nodes on one machine, an S3-compatible store and an MLflow server: the whole
pipeline submitted as a cluster user submits it, with nothing shared through a disk.

`configs/multinode.yaml` keeps the prepared data and the Ray Train / Tune storage in the
object store (moto in server mode) and the runs and model artifacts in an `mlflow
server` whose artifact store is that object store. Each node reads data through its own
node cache (`EMM_NODE_CACHE/<node id>`), filled from the object store. The test checks
where each stage ran (the `emm.nodes` tags and Serve's `served_by`), what the object
store holds, that each node keeps its own data copy, and that the fused model scores
the same as a single-node run of the same config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import BUCKET, REPO_ROOT
from tests.ray_nodes import free_port, start_head, start_worker, stop, submit, wait_for_jobs_api

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(1800)]

BIN = Path(sys.executable).parent
# Fused test AUC of the two-node run against a one-node run of the same config: 2-worker
# DDP sees each batch split in two, so the runs differ as two seeds do.
AUC_TOLERANCE = 0.02


@dataclass
class Cluster:
    address: str  # the head's jobs API
    nodes: dict[str, str]  # Ray node id -> "head" / "worker"
    env: dict[str, str]  # what every process of the job gets
    node_cache: Path


def _wait(check: Callable[[], object], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    pytest.fail(f"{what} not up after {timeout_s} s")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="emm_multinode_", dir="/tmp"))  # short: Ray sockets
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(workdir: Path, object_store: dict[str, str]) -> Iterator[str]:
    """`mlflow server` with a SQLite backend and the object store as artifact store."""
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--backend-store-uri=sqlite:///{workdir / 'mlflow.db'}",
            f"--artifacts-destination=s3://{BUCKET}/mlflow",
            "--workers=1",
        ],
        stdout=(workdir / "mlflow.log").open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **object_store},
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: urllib.request.urlopen(f"{uri}/health").status == 200, "mlflow server")
        yield uri
    finally:
        stop(server)


@pytest.fixture(scope="module")
def cluster(workdir: Path, object_store: dict[str, str], tracking_server: str) -> Iterator[Cluster]:
    """A head and a worker node of 1 CPU each, every process with the store's settings."""
    from ray.util.state import list_nodes

    env = {
        **object_store,
        "MLFLOW_TRACKING_URI": tracking_server,
        "EMM_NODE_CACHE": str(workdir / "node-cache"),
        "EMM_DATA_DIR": str(REPO_ROOT.parent / "shared" / "data"),
        # One proxy (HeadOnly) for every replica: Serve's proxy otherwise sends every
        # request to a replica on its own node while there is one.
        "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
    }
    head_port, dashboard = free_port(), free_port()
    address = f"http://127.0.0.1:{dashboard}"
    temp_dir = str(workdir / "ray")
    processes = [
        start_head(
            workdir / "head.log",
            temp_dir=temp_dir,
            head_port=head_port,
            dashboard_port=dashboard,
            num_cpus=1,
            env=env,
        )
    ]
    try:
        wait_for_jobs_api(address, processes[0])
        processes.append(
            start_worker(
                workdir / "worker.log",
                temp_dir=str(workdir / "rayw"),
                head_port=head_port,
                num_cpus=1,
                env=env,
            )
        )

        def alive() -> list:
            return list_nodes(address=address, filters=[("state", "=", "ALIVE")])

        _wait(lambda: len(alive()) == 2, "the worker node")
        nodes = {n.node_id: "head" if n.is_head_node else "worker" for n in alive()}
        yield Cluster(address, nodes, env, workdir / "node-cache")
    finally:
        for process in reversed(processes):
            stop(process)


def _fused_aucs(report_dir: Path) -> dict[str, float]:
    rows = json.loads((report_dir / "report.json").read_text())
    return {r["task"]: r["auc"] for r in rows if r["kind"] == "fused"}


def _object_keys(env: dict[str, str], prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def test_every_stage_runs_across_two_nodes(
    cluster: Cluster, tmp_path: Path, figures_log: Callable[..., None]
) -> None:
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    config = yaml.safe_load((REPO_ROOT / "configs" / "multinode.yaml").read_text())
    config["serve"]["port"] = port = free_port()
    config_path = tmp_path / "multinode.yaml"
    config_path.write_text(yaml.safe_dump(config))
    report = tmp_path / "report"
    submission_id = f"emm-multinode-{os.getpid()}"
    printed = submit(
        cluster.address,
        submission_id,
        {"env_vars": cluster.env},
        ["pipelines/full.py", "--config", str(config_path), "--output", str(report)],
    )[-8000:]
    status = {j.submission_id: j.status for j in JobSubmissionClient(cluster.address).list_jobs()}
    assert status.get(submission_id) == JobStatus.SUCCEEDED, printed

    # The streamed baseline read its shards from the store (configs/multinode.yaml).
    rows = json.loads((report / "report.json").read_text())
    assert {r["kind"] for r in rows} == {"fused", "pool", "baseline"}

    # Where each stage ran, as the runs record it.
    client = MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])
    placed: dict[str, list[list[str]]] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            tags = run.data.tags
            if "emm.nodes" in tags:
                placed.setdefault(tags.get("emm.kind", "?"), []).append(
                    tags["emm.nodes"].split(",")
                )
    members = [nodes[0] for nodes in placed["pool_member"]]
    assert sorted(members) == sorted(cluster.nodes), f"members on {members}"
    [fused] = placed["fused"]
    assert sorted(fused) == sorted(cluster.nodes), f"the 2 fusion workers on {fused}"
    trials = {nodes[0] for nodes in placed["tune_trial"]}
    assert trials == set(cluster.nodes), f"trials on {placed['tune_trial']}"

    # Both replicas answer, one per node.
    answered = {}
    deadline = time.monotonic() + 60
    while len(answered) < 2 and time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            served_by = json.load(response)["served_by"]
        answered[served_by["replica"]] = served_by["node"]
    assert sorted(answered.values()) == sorted(cluster.nodes), f"replicas: {answered}"

    # Data, checkpoints and artifacts went through the object store; every node read
    # the data from its own copy of it.
    assert "prepared/smoke/split.json" in _object_keys(cluster.env, "prepared/")
    checkpoints = _object_keys(cluster.env, "ray_results/")
    assert any("/checkpoint_" in key for key in checkpoints), checkpoints[:20]
    assert any(key.endswith(".pt") for key in _object_keys(cluster.env, "mlflow/"))
    copies = {p.parents[2].name for p in cluster.node_cache.glob("*/prepared/*/split.json")}
    assert {node[:16] for node in cluster.nodes} <= copies, copies

    # The same config on one node scores the same within seed noise.
    single = _single_node_config(config, tmp_path)
    local = subprocess.run(
        [
            sys.executable,
            "pipelines/full.py",
            "--config",
            str(single),
            "--stages",
            "prepare,pool,fuse,evaluate",
            "--output",
            str(tmp_path / "single"),
        ],
        cwd=REPO_ROOT,
        env={
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'single.db'}",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert local.returncode == 0, (local.stdout + local.stderr)[-6000:]
    two_nodes, one_node = _fused_aucs(report), _fused_aucs(tmp_path / "single")
    role = cluster.nodes.get
    figures_log(
        placement={
            "pool_members": [role(n) for n in members],
            "fusion_workers": [role(n) for n in fused],
            "tune_trials": sorted(role(nodes[0]) for nodes in placed["tune_trial"]),
            "serve_replicas": sorted(role(n) for n in answered.values()),
        },
        stage_seconds=json.loads((report / "summary.json").read_text())["stage_seconds"],
        fused_auc_two_nodes=two_nodes,
        fused_auc_one_node=one_node,
        objects={
            p: len(_object_keys(cluster.env, p)) for p in ("prepared/", "ray_results/", "mlflow/")
        },
    )
    for task, auc in one_node.items():
        assert abs(two_nodes[task] - auc) <= AUC_TOLERANCE, (task, two_nodes[task], auc)


def _single_node_config(config: dict, tmp_path: Path) -> Path:
    """The same run on local paths (nothing else changes)."""
    single = {
        **config,
        "prepared_dir": str(tmp_path / "prepared"),
        "storage": str(tmp_path / "ray_results"),
    }
    path = tmp_path / "single.yaml"
    path.write_text(yaml.safe_dump(single))
    return path
