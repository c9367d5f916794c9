"""MLflow store set-up: default SQLite store, env override, artifacts beside it, tag look-ups."""

from __future__ import annotations

from pathlib import Path

import pytest

from emm_ray.tracking.store import (
    claim_run,
    ensure_experiment,
    find_runs,
    flatten_params,
    log_params,
    resolve_tracking_uri,
    spec_digest,
    tag,
    tracking_client,
)


def test_default_uri_is_sqlite_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns.db"


def test_environment_and_explicit_uri_override_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"


def test_experiments_keep_artifacts_beside_the_database_and_runs_are_found_by_tag(
    tmp_path: Path,
) -> None:
    (tmp_path / "db").mkdir()
    client = tracking_client(f"sqlite:///{tmp_path / 'db' / 'runs.db'}")
    experiment_id = ensure_experiment(client, "exp")
    assert ensure_experiment(client, "exp") == experiment_id
    location = client.get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "db" / "mlartifacts").resolve().as_uri()

    finished = client.create_run(experiment_id, tags={tag("member"): "a", tag("x"): "it's"})
    client.set_terminated(finished.info.run_id, "FINISHED")
    failed = client.create_run(experiment_id, tags={tag("member"): "a", tag("x"): "it's"})
    client.set_terminated(failed.info.run_id, "FAILED")
    client.create_run(experiment_id, tags={tag("member"): "b"})

    found = find_runs(client, experiment_id, {"member": "a", "x": "it's"})
    assert [r.info.run_id for r in found] == [finished.info.run_id]
    assert find_runs(client, experiment_id, {"member": "b"}) == []
    assert len(find_runs(client, experiment_id, {"member": "b"}, status=None)) == 1


def test_params_flatten_and_digests_are_stable() -> None:
    flat = flatten_params("hparam", {"hidden": [64, 32], "opt": {"lr": 0.1, "name": "adam"}})
    assert flat == {
        "hparam.hidden": "[64, 32]",
        "hparam.opt.lr": "0.1",
        "hparam.opt.name": '"adam"',
    }
    assert spec_digest({"a": 1, "b": [1, 2]}) == spec_digest({"b": [1, 2], "a": 1})
    assert spec_digest({"a": 1}) != spec_digest({"a": 2})


def test_a_rerun_reopens_the_run_an_interrupted_attempt_left(tmp_path: Path) -> None:
    """One run per piece of work: a RUNNING (driver killed) run is reopened; a FAILED
    one stays the record of its failure; FINISHED ones only when asked (redone work);
    `reopen=False` (--force) always starts anew; other work gets its own run."""
    client = tracking_client(f"sqlite:///{tmp_path / 'runs.db'}")
    experiment = ensure_experiment(client, "claims")
    work = {"kind": "member", "spec_digest": "abc"}
    first = claim_run(client, experiment, work, "m", extra_tags={"task": "ctr"})
    log_params(client, first, {"lr": "0.1"})
    client.set_tag(first, tag("resumed_after_epoch"), "2")  # left by the killed attempt

    again = claim_run(client, experiment, work, "m")
    run = client.get_run(again)
    assert again == first and run.info.status == "RUNNING"
    assert tag("resumed_after_epoch") not in run.data.tags
    assert run.data.tags[tag("task")] == "ctr"
    log_params(client, again, {"lr": "0.1", "resources.cpu": "1"})  # no clash on rerun
    assert client.get_run(again).data.params == {"lr": "0.1", "resources.cpu": "1"}
    assert claim_run(client, experiment, work, "m", reopen=False) != first

    client.set_terminated(first, "FAILED")
    retry = claim_run(client, experiment, work, "m")
    assert retry != first and client.get_run(first).info.status == "FAILED"
    client.set_terminated(retry, "FINISHED")
    assert claim_run(client, experiment, work, "m", reuse_finished=True) == retry
    client.set_terminated(retry, "FINISHED")
    fresh = claim_run(client, experiment, work, "m")
    other = claim_run(client, experiment, {**work, "spec_digest": "def"}, "m")
    assert len({first, retry, fresh, other}) == 4
