"""The run console: epochs published by any Ray process are printed by the driver."""

from __future__ import annotations

import contextlib

import pytest

from emm_ray.progress import BOARD_NAME, Console, EpochProgress, publish


def progress(epoch: int, stopping: bool = False) -> EpochProgress:
    return EpochProgress("mlp_income", epoch, 4, 12345.6, 0.91234, 30.0, stopping)


def test_an_epoch_line_says_where_the_job_stands() -> None:
    assert progress(1).line() == (
        "mlp_income: epoch 1/4, 12,346 rows/s, val AUC 0.9123, about 1m30s left"
    )
    assert progress(2, stopping=True).line().endswith(", done")
    assert progress(4).line().endswith(", done")


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_epochs_published_by_workers_are_printed_under_the_stage(
    ray_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def worker_epoch(epoch: int) -> None:
        publish(progress(epoch))

    with contextlib.suppress(ValueError):  # a board an interrupted test left behind
        ray.kill(ray.get_actor(BOARD_NAME))
    ray.get(worker_epoch.remote(1))  # no console yet: nothing to print, and no error
    console = Console()
    try:
        console.stage = "pool"
        ray.get([worker_epoch.remote(e) for e in (1, 2)])
        console.flush()
    finally:
        console.close()
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(f"[emm-ray] pool {progress(e).line()}" for e in (1, 2))
