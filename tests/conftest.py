"""Shared fixtures: one local Ray cluster for the whole session, the real-data directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import emm_ray  # noqa: F401  (sets Ray's environment before ray is imported)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUCKET = "emm-cluster"  # the object store bucket of configs/multinode.yaml


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real benchmark data (`EMM_DATA_DIR`, default `../shared/data` beside the repo)."""
    path = Path(os.environ.get("EMM_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"real data directory {path} not found; set EMM_DATA_DIR")
    return path


def start_local_ray(num_cpus: int, object_store_mib: int) -> None:
    """A new local Ray of this process on 127.0.0.1, without a dashboard."""
    import ray

    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=object_store_mib * 1024**2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
    )


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local cluster (2 CPUs, 512 MB object store) shared by every Ray test."""
    import ray

    start_local_ray(num_cpus=2, object_store_mib=512)
    yield
    ray.shutdown()


@pytest.fixture
def figures_log(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record a test's figures (one JSON line, with the test's name) in the file
    `EMM_FIGURES_LOG` names; `benchmarks/reliability.py` and `benchmarks/multinode.py` set
    it and turn the lines into their tables in benchmarks/results/. Without it: nothing
    is written."""
    path = os.environ.get("EMM_FIGURES_LOG")

    def record(**figures: object) -> None:
        if path:
            with open(path, "a") as log:
                log.write(json.dumps({"test": request.node.nodeid, **figures}) + "\n")

    return record


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An S3-compatible store (moto's server on 127.0.0.1) holding `BUCKET`; yields the
    environment its clients need (pyarrow, boto3 and MLflow all read these)."""
    import subprocess
    import sys
    import time

    import boto3

    from tests.ray_nodes import free_port, stop

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=(tmp_path_factory.mktemp("moto") / "moto.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "emm-test",
        "AWS_SECRET_ACCESS_KEY": "emm-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="emm-test",
        aws_secret_access_key="emm-test",
        region_name="us-east-1",
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("moto's S3 server did not come up on 127.0.0.1")
                time.sleep(0.5)
        yield env
    finally:
        stop(server)
