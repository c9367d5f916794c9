"""Keeps Ray Data's scheduling loop from spinning while a slow consumer holds it back.

Ray Data's streaming executor (Ray 2.60) blocks in `ray.wait` only while it has tasks
in flight. Once its read-ahead budget is full and every read has finished, which is
most of a training epoch (the model consumes rows slower than parquet is read), each
step returns at once and the loop runs flat out, taking a core from the training worker
beside it (measured: docs/ARCHITECTURE.md, `benchmarks/results/ingest_pacing.md`).
`IdleBackoff` sleeps briefly in a step that came right after the previous one, which
only a loop with nothing to wait for does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ray.data._internal.execution.execution_callback import ExecutionCallback

if TYPE_CHECKING:
    import ray.data
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

SPIN_S = 0.002  # steps closer than this waited for nothing
PAUSE_S = 0.02  # a new read is dispatched at most this late; a block takes far longer


class IdleBackoff(ExecutionCallback):
    """An execution callback that pauses a step which followed the last one at once."""

    def __init__(self) -> None:
        self._last_step: float | None = None

    def on_execution_step(self, executor: StreamingExecutor) -> None:
        now = time.perf_counter()
        if self._last_step is not None and now - self._last_step < SPIN_S:
            time.sleep(PAUSE_S)
            now = time.perf_counter()
        self._last_step = now


def pace(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """`dataset`, whose executions (wherever they run: a Train `SplitCoordinator`, an
    iterator, a write) carry `IdleBackoff`."""
    callbacks = dataset.context.custom_execution_callback_classes
    if IdleBackoff not in callbacks:
        callbacks.append(IdleBackoff)
    return dataset
