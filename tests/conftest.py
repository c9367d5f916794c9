"""Shared fixtures: one local Ray cluster for the whole session, the real-data directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import emm_ray  # noqa: F401  (sets Ray's environment before ray is imported)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real benchmark data (`EMM_DATA_DIR`, default `../shared/data` beside the repo)."""
    path = Path(os.environ.get("EMM_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"real data directory {path} not found; set EMM_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local cluster (2 CPUs, 512 MB object store) shared by every Ray test."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=512 * 1024**2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
    )
    yield
    ray.shutdown()


@pytest.fixture
def reliability_log(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record a test's fault and load figures (one JSON line, with the test's name) in the
    file `EMM_RELIABILITY_LOG` names; `benchmarks/reliability.py` sets it and turns the
    lines into benchmarks/results/reliability.md and .json. Without it: nothing is written."""
    path = os.environ.get("EMM_RELIABILITY_LOG")

    def record(**figures: object) -> None:
        if path:
            with open(path, "a") as log:
                log.write(json.dumps({"test": request.node.nodeid, **figures}) + "\n")

    return record
