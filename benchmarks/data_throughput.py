"""Data-path benchmark: Ray Data streaming vs in-memory pyarrow, and memory at 1M vs 10M rows.

1. Prepares synthetic census data (the built-in default) of `--rows` and `--big-rows`
   rows with the streaming `prepare_dataset`, sampling memory while it runs.
2. Throughput on the `--rows` train split, side by side, each twice: the Ray Data path
   (`read_parquet` -> `iter_torch_batches(collate_fn=BatchCollator)`) and the in-memory
   path (`pyarrow.parquet.read_table`, then slicing the table into the same `Batch`es).
3. Memory vs rows: the train split of both sizes streamed by Ray Data (with memory over
   time for the big one) and, for contrast, loaded into memory by pyarrow.

Memory is the proportional set size (PSS, so shared object-store pages count once) of
this process plus all its descendants (Ray's GCS, raylet, workers), sampled every 0.2 s
from /proc, with the number of processes. The machine may be shared: the load average
is recorded with the results.

    python benchmarks/data_throughput.py                       # 1M vs 10M rows
    python benchmarks/data_throughput.py --rows 200000 --big-rows 1000000   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyarrow.parquet as pq
from process_tree import tree_pss  # run as a script

import emm_ray
from emm_ray.data.batch import BatchCollator
from emm_ray.data.prepare import SPLIT_FILE, DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.streaming import iter_batches, read_split, split_columns
from emm_ray.runtime import init_ray

RESULTS = Path(__file__).resolve().parent / "results" / "data_throughput.md"
T = TypeVar("T")
Sample = tuple[float, int, int, int]  # seconds, rows consumed, PSS KiB, processes


@dataclass
class MemorySampler:
    """Samples the PSS of this process tree in a thread; `progress` tags each sample."""

    interval_s: float = 0.2
    samples: list[Sample] = field(default_factory=list)
    progress: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return max(s[2] for s in self.samples) / 1024

    @property
    def peak_processes(self) -> int:
        return max(s[3] for s in self.samples)

    def _run(self) -> None:
        start = time.perf_counter()
        while True:
            pss, processes = tree_pss()
            self.samples.append((time.perf_counter() - start, self.progress, pss, processes))
            if self._stop.wait(self.interval_s):
                break


def timed(fn: Callable[[MemorySampler], T]) -> tuple[T, float, MemorySampler]:
    """Run `fn(sampler)`; returns its result, the seconds taken and the memory samples."""
    with MemorySampler() as sampler:
        start = time.perf_counter()
        result = fn(sampler)
        seconds = time.perf_counter() - start
    return result, seconds, sampler


def prepare(rows: int, workdir: Path, chunk_rows: int) -> tuple[PreparedDataset, float, float]:
    """Synthetic census of `rows` rows, prepared (streaming) under the memory sampler.

    A `--workdir` kept from an earlier run is reused (prepare is a no-op then) and the
    timing recorded when it was first prepared is reported.
    """
    config = DatasetConfig(rows=rows, chunk_rows=chunk_rows)
    target = workdir / f"census-{rows}"
    record = workdir / f"census-{rows}.prepare-timing.json"
    if (target / SPLIT_FILE).is_file() and record.is_file():
        seconds, peak = json.loads(record.read_text())
        return prepare_dataset(config, target), seconds, peak
    prepared, seconds, sampler = timed(lambda s: prepare_dataset(config, target))
    record.write_text(json.dumps([seconds, sampler.peak_mib]))
    return prepared, seconds, sampler.peak_mib


def stream_ray(prepared: PreparedDataset, batch_size: int, sampler: MemorySampler) -> int:
    rows = 0
    dataset = read_split(prepared.path, "train")
    for batch in iter_batches(dataset, prepared.schema, batch_size, prefetch_batches=2):
        rows += len(batch)
        sampler.progress = rows
    return rows


def stream_pyarrow(prepared: PreparedDataset, batch_size: int, sampler: MemorySampler) -> int:
    table = pq.read_table(prepared.split_dir("train"), columns=split_columns(prepared.schema))
    collate = BatchCollator(prepared.schema)
    rows = 0
    for start in range(0, table.num_rows, batch_size):
        part = table.slice(start, batch_size)
        batch = collate({name: part.column(name).to_numpy() for name in part.column_names})
        rows += len(batch)
        sampler.progress = rows
    return rows


def quiet_ray_data() -> None:
    """No progress logs: without tqdm, Ray Data logs progress lines every few seconds."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


@dataclass
class Run:
    path: str
    dataset_rows: int
    rows: int
    seconds: float
    sampler: MemorySampler

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def measure(
    name: str, fn: Callable, prepared: PreparedDataset, dataset_rows: int, batch_size: int
) -> Run:
    rows, seconds, sampler = timed(lambda s: fn(prepared, batch_size, s))
    run = Run(name, dataset_rows, rows, seconds, sampler)
    print(
        f"{name}, {dataset_rows:,}-row dataset: {run.rows_per_s:,.0f} rows/s, "
        f"peak {sampler.peak_mib:.0f} MiB",
        flush=True,
    )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for throughput")
    parser.add_argument("--big-rows", type=int, default=10_000_000, help="rows for the memory run")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--chunk-rows", type=int, default=500_000, help="prepare chunk size")
    parser.add_argument("--object-store-mib", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None, help="kept; default: a temp dir")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emm-data-bench-"))
    load_before = os.getloadavg()
    sizes = [args.rows] + ([args.big_rows] if args.big_rows > args.rows else [])
    prepared, prepare_rows = {}, []
    for rows in sizes:
        prepared[rows], seconds, peak = prepare(rows, workdir, args.chunk_rows)
        prepare_rows.append((rows, seconds, peak))
        print(f"prepare {rows:,} rows: {seconds:.1f} s, peak {peak:.0f} MiB", flush=True)

    memory = {"before Ray": tree_pss()[0] / 1024}
    init_ray(num_cpus=2, object_store_memory=args.object_store_mib * 1024**2)
    quiet_ray_data()
    memory["idle Ray"] = tree_pss()[0] / 1024

    small = prepared[args.rows]
    throughput = [
        measure(f"{name}, run {run}", fn, small, args.rows, args.batch_size)
        for run in (1, 2)
        for name, fn in [("pyarrow in memory", stream_pyarrow), ("Ray Data", stream_ray)]
    ]
    scaling = [
        measure(name, fn, prepared[rows], rows, args.batch_size)
        for rows in sizes
        for name, fn in [("Ray Data", stream_ray), ("pyarrow in memory", stream_pyarrow)]
    ]
    timeline = next(r for r in reversed(scaling) if r.path == "Ray Data")
    load = f"{_load(load_before)} before, {_load(os.getloadavg())} after"

    report = render(args, prepare_rows, throughput, scaling, timeline, memory, load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    if args.workdir is None:
        shutil.rmtree(workdir)


def render(
    args: argparse.Namespace,
    prepare_rows: list[tuple[int, float, float]],
    throughput: list[Run],
    scaling: list[Run],
    timeline: Run,
    memory: dict[str, float],
    load: str,
) -> str:
    import ray

    lines = [
        "# Data throughput and memory",
        "",
        f"Synthetic census (39 features, 2 tasks), batch size {args.batch_size}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, emm-ray "
        f"{emm_ray.__version__}, Ray {ray.__version__}, local Ray with 2 CPUs and a "
        f"{args.object_store_mib} MiB object store. Memory = PSS of the benchmark process and "
        "all its descendants (Ray's GCS, raylet, workers; object-store pages counted once), "
        f"sampled every 0.2 s. Load average (1/5/15 min): {load}. The machine was shared with "
        "other jobs, so timings are indicative; compare rows side by side.",
        "",
        "Command: `python benchmarks/data_throughput.py "
        f"--rows {args.rows} --big-rows {args.big_rows} --batch-size {args.batch_size}`",
        "",
        "## Prepare (generate, split, fit on train, encode, write parquet; streaming)",
        "",
        "Memory here is this process alone (Ray is not started yet). With a kept `--workdir`, "
        "these are the timings recorded when the data was first prepared.",
        "",
        "| rows | seconds | rows/s | peak memory (MiB) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r:,} | {s:.1f} | {r / s:,.0f} | {p:.0f} |" for r, s, p in prepare_rows]
    lines += [
        "",
        f"## Reading the {throughput[0].rows:,}-row train split into `Batch`es",
        "",
        f"Process tree before Ray: {memory['before Ray']:.0f} MiB; with an idle local Ray: "
        f"{memory['idle Ray']:.0f} MiB.",
        "",
        "| path | rows | seconds | rows/s | peak memory (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.path} | {r.rows:,} | {r.seconds:.2f} | {r.rows_per_s:,.0f} | "
        f"{r.sampler.peak_mib:.0f} |"
        for r in throughput
    ]
    lines += [
        "",
        "## Memory vs rows: the train split streamed by Ray Data, or loaded by pyarrow",
        "",
        "| path | dataset rows | train rows | seconds | rows/s | peak memory (MiB) "
        "| processes at most |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.path} | {r.dataset_rows:,} | {r.rows:,} | {r.seconds:.1f} | {r.rows_per_s:,.0f} "
        f"| {r.sampler.peak_mib:.0f} | {r.sampler.peak_processes} |"
        for r in scaling
    ]
    lines += [
        "",
        f"Memory over time while Ray Data streams the {timeline.dataset_rows:,}-row dataset's "
        "train split (about every 10% of rows):",
        "",
        "| seconds | rows consumed | memory (MiB) | processes |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {t:.1f} | {p:,} | {k / 1024:.0f} | {n} |"
        for t, p, k, n in _every_tenth(timeline.sampler.samples)
    ]
    return "\n".join(lines) + "\n"


def _every_tenth(samples: list[Sample]) -> list[Sample]:
    last = samples[-1][1] or 1
    picked, mark = [], 0.0
    for sample in samples:
        if sample[1] >= mark * last:
            picked.append(sample)
            mark += 0.1
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return picked


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


if __name__ == "__main__":
    main()
