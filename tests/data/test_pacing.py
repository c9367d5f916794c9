"""`pacing.IdleBackoff`: Ray Data's scheduling loop pauses only when it waited for nothing."""

from __future__ import annotations

import pytest

from emm_ray.data import pacing
from emm_ray.data.pacing import PAUSE_S, IdleBackoff, pace


class Clock:
    """`time` as the callback sees it: perf_counter moves only when told to, or by sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(pacing, "time", clock)
    return clock


def test_a_step_right_after_the_last_one_pauses(clock: Clock) -> None:
    backoff = IdleBackoff()
    backoff.on_execution_step(None)  # the first step has nothing to compare with
    clock.now += 0.0005  # a step that returned at once: nothing was in flight
    backoff.on_execution_step(None)
    assert clock.sleeps == [PAUSE_S]


def test_a_step_that_waited_for_a_task_does_not_pause(clock: Clock) -> None:
    backoff = IdleBackoff()
    backoff.on_execution_step(None)
    clock.now += 0.1  # ray.wait blocked for its timeout or a task's end
    backoff.on_execution_step(None)
    clock.now += 0.05
    backoff.on_execution_step(None)
    assert clock.sleeps == []


def test_the_pause_is_measured_from_its_end(clock: Clock) -> None:
    backoff = IdleBackoff()
    backoff.on_execution_step(None)
    backoff.on_execution_step(None)  # spins: pauses
    clock.now += 0.05  # then a step that waited
    backoff.on_execution_step(None)
    assert clock.sleeps == [PAUSE_S]


@pytest.mark.timeout(120)
def test_paced_datasets_carry_the_callback_once_and_still_yield_every_row(ray_cluster) -> None:
    import ray.data

    data = pace(pace(ray.data.range(10_000, override_num_blocks=20)))
    assert data.context.custom_execution_callback_classes.count(IdleBackoff) == 1
    assert IdleBackoff not in ray.data.DataContext.get_current().custom_execution_callback_classes
    assert sum(len(b["id"]) for b in data.iter_batches(batch_size=512)) == 10_000
