"""The console of a run: one line per training epoch, from whichever process ran it.

Ray streams every worker's output to the driver by default; for a training job that is
several long lines per epoch (Train's reports and checkpoint paths, worker group and
placement-group messages). A run leaves those in Ray's log files
(`init_ray(worker_logs=False)`, which prints where they are) and prints its own: the
process that ends an epoch (a Ray Train worker of rank 0, a Ray task, a Tune trial) hands
a short `EpochProgress` to a named actor, and a thread of the driver's `Console` prints
it under the stage that is running.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

BOARD_NAME = "emm-progress"
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class EpochProgress:
    job: str
    epoch: int
    max_epochs: int
    rows_per_s: float
    val_auc: float
    seconds_per_epoch: float  # mean over the epochs this process ran
    stopping: bool  # early stopping ends the job after this epoch

    def line(self) -> str:
        done = self.stopping or self.epoch >= self.max_epochs
        remaining = self.seconds_per_epoch * (self.max_epochs - self.epoch)
        left = "done" if done else f"about {_duration(remaining)} left"
        return (
            f"{self.job}: epoch {self.epoch}/{self.max_epochs}, {self.rows_per_s:,.0f} rows/s, "
            f"val AUC {self.val_auc:.4f}, {left}"
        )


def publish(progress: EpochProgress) -> None:
    """Hand `progress` to the run's console, if the driver runs one (else nothing)."""
    import ray
    import ray.exceptions

    if not ray.is_initialized():
        return
    try:
        board = ray.get_actor(BOARD_NAME)
        ray.get(board.put.remote(progress))  # waited for, so it precedes the job's end
    except (ValueError, ray.exceptions.RayError):  # no console (a library call, a test),
        return  # or it is gone: a line is not worth failing training for


def epoch_publisher(job: str, max_epochs: int) -> Any:
    """An `on_epoch`-shaped function publishing each epoch of `job` (`train.loop.EpochEnd`)."""
    started = time.perf_counter()
    ran: list[int] = []  # epochs of this process (a resumed job starts past 1)

    def on_epoch(end: Any) -> None:
        ran.append(int(end.metrics["epoch"]))
        publish(
            EpochProgress(
                job=job,
                epoch=ran[-1],
                max_epochs=max_epochs,
                rows_per_s=float(end.metrics.get("train_samples_per_s", 0.0)),
                val_auc=float(end.metrics.get("val_auc", float("nan"))),
                seconds_per_epoch=(time.perf_counter() - started) / len(ran),
                stopping=bool(end.stopping),
            )
        )

    return on_epoch


class _Board:
    """Holds published epochs until the console takes them (one per run, 0 CPUs)."""

    def __init__(self) -> None:
        self._waiting: list[EpochProgress] = []

    def put(self, progress: EpochProgress) -> None:
        self._waiting.append(progress)

    def take(self) -> list[EpochProgress]:
        taken, self._waiting = self._waiting, []
        return taken


class Console:
    """Prints published epochs as `[emm-ray] <stage> <job>: epoch ...` while a run goes."""

    def __init__(self, stage: str = "") -> None:
        import ray

        self.stage = stage
        self._printing = threading.Lock()
        self._board = (
            ray.remote(_Board).options(name=BOARD_NAME, num_cpus=0, get_if_exists=True).remote()
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._print_loop, daemon=True, name="emm-console")
        self._thread.start()

    def _print_loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self.flush()

    def flush(self) -> None:
        """Print what was published so far (also called when a stage ends)."""
        import ray

        with self._printing:
            for progress in ray.get(self._board.take.remote()):
                print(f"[emm-ray] {self.stage} {progress.line()}", flush=True)

    def close(self) -> None:
        import ray

        self._stop.set()
        self._thread.join()
        self.flush()
        ray.kill(self._board)

    def __enter__(self) -> Console:
        return self

    def __exit__(self, failure: type[BaseException] | None, *_: object) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never hide the run's own error behind the console's
            if failure is None:
                raise


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
