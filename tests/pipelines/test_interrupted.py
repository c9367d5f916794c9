"""The pipeline's driver killed during pool, fuse and tune: each rerun goes on from there.

One store, one command (`python pipelines/full.py --config <cfg>`), run five times:
killed (SIGKILL, by pid) while a pool member trains, rerun and killed while the fused
model trains, rerun and killed during the search, rerun to the end, rerun once more.
The store must then hold one run per piece of work, one registered version per model,
`@champion` on the best validated fused model, and the last rerun must add nothing.

Slow (five pipeline runs, each starting its own local Ray): in the reliability job
(`python -m pytest -m reliability`, `benchmarks/reliability.py`).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from emm_ray.tracking.store import TAG_PREFIX, tracking_client
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.reliability]

MODEL_NAME = "emm-interrupted"
# The emm tags that say which piece of work a run records (the lookup tags of each stage).
IDENTITY_TAGS = (
    "kind",
    "member",
    "name",
    "baseline",
    "spec_digest",
    "schema_hash",
    "data_fingerprint",
    "search",
    "trial_id",
    "fused_run",
    "inputs",
)
STAGE_TIMEOUT_S = 900


def _write_config(directory: Path) -> Path:
    """Smoke-sized data, but every job long enough to be caught mid-way: three members
    trained one after another on Ray Train (checkpoints each epoch), fusion on Ray Train,
    and the tiny search."""
    train = {"epochs": 3, "batch_size": 256, "lr": 0.003, "patience": 3}
    hparams = {"embed_dim": 4, "hidden": [16, 8]}
    pool = {
        "name": "interrupted",
        "experiment": "emm-pool",
        "train": train,
        "resources": {"cpu": 0.5},
        "data_mode": "stream",
        "max_concurrent": 1,
        "members": [
            {"name": name, "architecture": architecture, "task": task, "hparams": hparams}
            for name, architecture, task in (
                ("mlp_income", "mlp", "income"),
                ("deepfm_nm", "deepfm", "never_married"),
                ("mlp_nm", "mlp", "never_married"),
            )
        ],
    }
    config = {
        "data": {"name": "census", "source": "synthetic", "rows": 6000, "seed": 0},
        "prepared_dir": str(directory / "prepared"),
        "pool": str(directory / "pool.yaml"),
        "tune": str(REPO_ROOT / "tune_spaces" / "tiny.yaml"),
        "model_name": MODEL_NAME,
        "stages": ["prepare", "pool", "fuse", "baselines", "tune", "evaluate", "register"],
        "fuse": {
            "name": "emm-interrupted",
            "fusion": {"d_model": 16, "heads": 2, "top_k": 1, "tower_hidden": [16]},
            "train": train,
            "data_mode": "stream",
        },
        "baselines": {"names": ["shared_bottom"], "train": {"epochs": 1, "batch_size": 512}},
    }
    (directory / "pool.yaml").write_text(yaml.safe_dump(pool))
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class PipelineProcess:
    """`python pipelines/full.py` in `directory`, its output read line by line."""

    def __init__(self, directory: Path, config: Path) -> None:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{directory / 'mlruns.db'}",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("RAY_ADDRESS", None)
        self.process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "pipelines" / "full.py"), "--config", str(config)],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def output(self) -> str:
        """The end of what was printed, for failure messages."""
        return self.text()[-6000:]

    def kill_when(self, ready: Callable[[], bool], what: str) -> None:
        """SIGKILL the driver as soon as `ready()` holds (checked every 0.2 s)."""
        deadline = time.monotonic() + STAGE_TIMEOUT_S
        while not ready():
            if self.process.poll() is not None:
                pytest.fail(f"the run ended before {what}:\n{self.output()}")
            assert time.monotonic() < deadline, f"no {what} after {STAGE_TIMEOUT_S} s"
            time.sleep(0.2)
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)
        self._reader.join(timeout=60)

    def finish(self) -> str:
        """Wait for the run to end; its output (the test fails if it failed)."""
        code = self.process.wait(timeout=STAGE_TIMEOUT_S)
        self._reader.join(timeout=60)
        assert code == 0, f"the rerun failed ({code}):\n{self.output()}"
        return self.text()


class Store:
    """Read-only looks at the run's MLflow SQLite store, safe while the driver writes."""

    def __init__(self, database: Path) -> None:
        self.database = database

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.database.exists():
            return []
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30) as db:
            try:
                return db.execute(sql).fetchall()
            except sqlite3.OperationalError:  # tables not created yet
                return []

    def runs(self, kind: str, status: str) -> list[str]:
        return [
            row[0]
            for row in self.query(
                "SELECT runs.run_uuid FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                f"WHERE tags.key = '{TAG_PREFIX}kind' AND tags.value = '{kind}' "
                f"AND runs.status = '{status}' AND runs.lifecycle_stage = 'active'"
            )
        ]

    def end_times(self) -> dict[str, int | None]:
        return dict(self.query("SELECT run_uuid, end_time FROM runs"))


def _checkpoints(directory: Path, prefix: str) -> list[Path]:
    return list((directory / "ray_results").glob(f"{prefix}*/checkpoint_*/train_state.pt"))


def _identities(client: Any) -> tuple[Counter[tuple[str, ...]], list[str]]:
    """How many runs record each piece of work, and the runs not FINISHED or KILLED."""
    identities: Counter[tuple[str, ...]] = Counter()
    unfinished = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=5000):
            tags = run.data.tags
            key = tuple(tags.get(TAG_PREFIX + name, "") for name in IDENTITY_TAGS)
            identities[(experiment.name, *key)] += 1
            if run.info.status not in ("FINISHED", "KILLED"):
                unfinished.append(f"{run.info.run_name} {run.info.status}")
    return identities, unfinished


def _versions(client: Any) -> list[Any]:
    return client.search_model_versions(f"name = '{MODEL_NAME}'")


@pytest.mark.timeout(3600)
def test_a_killed_driver_resumes_and_leaves_no_duplicates(tmp_path: Path, figures_log: Any) -> None:
    config = _write_config(tmp_path)
    store = Store(tmp_path / "mlruns.db")

    # 1. killed while the second member trains (the first one finished, the second has a
    #    checkpoint): the rerun must skip the first and go on with the second.
    first = PipelineProcess(tmp_path, config)
    first.kill_when(
        lambda: (
            len(store.runs("pool_member", "FINISHED")) == 1
            and bool(store.runs("pool_member", "RUNNING"))
            and len(_checkpoints(tmp_path, "deepfm_nm-")) > 0
        ),
        "a finished member and a checkpoint of the next",
    )
    members_before = set(store.runs("pool_member", "FINISHED"))
    ends_before = store.end_times()

    # 2. rerun, killed while fusion trains (after its first checkpoint).
    second = PipelineProcess(tmp_path, config)
    second.kill_when(
        lambda: (
            bool(store.runs("fused", "RUNNING"))
            and len(_checkpoints(tmp_path, "fuse-emm-interrupted-")) > 0
        ),
        "a checkpoint of the fused model",
    )
    members = set(store.runs("pool_member", "FINISHED"))
    assert members_before < members and len(members) == 3, second.output()
    assert all(store.end_times()[run] == ends_before[run] for run in members_before), (
        "the rerun retrained a member the killed run had finished"
    )
    assert "going on from the interrupted run" in second.text(), second.output()

    # 3. rerun, killed during the search (one trial done, Tune's state saved).
    third = PipelineProcess(tmp_path, config)
    third.kill_when(
        lambda: (
            bool(store.runs("tune_trial", "FINISHED"))
            and bool(list((tmp_path / "ray_results").glob("tune-*/experiment_state-*.json")))
        ),
        "a finished trial",
    )
    trials_before = set(store.runs("tune_trial", "FINISHED"))

    # 4. rerun to the end: the search is restored, not started again.
    fourth = PipelineProcess(tmp_path, config)
    printed = fourth.finish()
    assert "[emm-ray] stage register done" in printed, printed[-6000:]
    client = tracking_client(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert trials_before <= set(store.runs("tune_trial", "FINISHED"))
    searches = {client.get_run(r).data.tags[TAG_PREFIX + "search"] for r in trials_before}
    assert len(searches) == 1, "the rerun started a new search instead of restoring it"

    (fused_run,) = store.runs("fused", "FINISHED")
    fused_tags = client.get_run(fused_run).data.tags
    resumed = int(fused_tags.get(TAG_PREFIX + "resumed_after_epoch", 0))
    resumed_members = [
        r for r in members if TAG_PREFIX + "resumed_after_epoch" in client.get_run(r).data.tags
    ]

    identities, unfinished = _identities(client)
    duplicate_runs = sum(count - 1 for count in identities.values())
    versions = _versions(client)
    duplicate_versions = len(versions) - len({v.run_id for v in versions})
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    candidates = {
        fused_run: client.get_run(fused_run).data.metrics["best_val_auc"],
        **{
            v.run_id: float(v.tags["metric.val_auc"])
            for v in versions
            if TAG_PREFIX + "search" in v.tags
        },
    }

    # 5. an identical rerun trains and registers nothing.
    runs_before, versions_before = sum(identities.values()), len(versions)
    fifth = PipelineProcess(tmp_path, config)
    fifth.finish()
    identities_after, _ = _identities(client)
    new_runs = sum(identities_after.values()) - runs_before
    new_versions = len(_versions(client)) - versions_before

    figures_log(
        check="pipeline driver killed during pool, fuse and tune, rerun twice",
        faults_injected=3,
        faults_survived=int(resumed > 0) + int(bool(resumed_members)) + int(len(searches) == 1),
        duplicate_runs=duplicate_runs,
        duplicate_versions=duplicate_versions,
        runs_added_by_identical_rerun=new_runs,
        versions_added_by_identical_rerun=new_versions,
        fused_resumed_after_epoch=resumed,
        members_resumed=len(resumed_members),
    )
    assert resumed > 0, "the fused model trained from scratch after the kill"
    assert resumed_members, "the killed member trained from scratch after the kill"
    assert duplicate_runs == 0, [k for k, n in identities.items() if n > 1]
    assert not unfinished, unfinished
    assert duplicate_versions == 0, [(v.version, v.run_id) for v in versions]
    assert champion.run_id == max(candidates, key=candidates.__getitem__), json.dumps(candidates)
    assert new_runs == 0 and new_versions == 0
