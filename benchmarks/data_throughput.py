"""Data-path benchmark: Ray Data streaming vs in-memory pyarrow, and memory at 1M vs 10M rows.

1. Prepares synthetic census data (the built-in default) of `--rows` and `--big-rows`
   rows with the streaming `prepare_dataset`, sampling memory while it runs.
2. Throughput on the `--rows` train split, side by side: the Ray Data path
   (`read_parquet` -> `iter_torch_batches(collate_fn=BatchCollator)`, two epochs: the
   first includes planning and cold reads) and the in-memory path (`pyarrow.parquet.
   read_table`, then slicing the table into the same `Batch`es).
3. Streams the train split of both sizes through Ray Data, sampling memory over time,
   and, for contrast, loads each into memory with pyarrow (whose memory does grow).

Memory is the proportional set size (PSS, so shared object-store pages are not counted
twice) of this process plus all its descendants (Ray's GCS, raylet and workers),
sampled every 0.2 s from /proc. Flat memory means the 10M-row peaks stay close to the
1M-row peaks. The machine may be shared: the load average is recorded with the results.

    python benchmarks/data_throughput.py                       # 1M vs 10M, ~10 min on 2 cores
    python benchmarks/data_throughput.py --rows 200000 --big-rows 1000000   # quick look
"""

from __future__ import annotations

import argparse
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

import emm_ray
from emm_ray.data.batch import BatchCollator
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.streaming import iter_batches, read_split, split_columns
from emm_ray.runtime import init_ray

RESULTS = Path(__file__).resolve().parent / "results" / "data_throughput.md"
T = TypeVar("T")


@dataclass
class MemorySampler:
    """Samples the PSS of this process tree in a thread; `progress` tags each sample."""

    interval_s: float = 0.2
    samples: list[tuple[float, int, int]] = field(default_factory=list)
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
        return max(s[2] for s in self.samples) / 1024 if self.samples else float("nan")

    def _run(self) -> None:
        start = time.perf_counter()
        while True:
            self.samples.append((time.perf_counter() - start, self.progress, tree_pss_kib()))
            if self._stop.wait(self.interval_s):
                break


def tree_pss_kib(root: int | None = None) -> int:
    """PSS (KiB) of `root` (default: this process) and all its descendants."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def timed(fn: Callable[[MemorySampler], T]) -> tuple[T, float, MemorySampler]:
    """Run `fn(sampler)`; returns its result, the seconds taken and the memory samples."""
    with MemorySampler() as sampler:
        start = time.perf_counter()
        result = fn(sampler)
        seconds = time.perf_counter() - start
    return result, seconds, sampler


def prepare(rows: int, workdir: Path, chunk_rows: int) -> tuple[PreparedDataset, float, float]:
    """Synthetic census of `rows` rows, prepared (streaming) under the memory sampler."""
    config = DatasetConfig(rows=rows, chunk_rows=chunk_rows)
    prepared, seconds, sampler = timed(
        lambda s: prepare_dataset(config, workdir / f"census-{rows}")
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for throughput")
    parser.add_argument("--big-rows", type=int, default=10_000_000, help="rows for the memory run")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--chunk-rows", type=int, default=500_000, help="prepare chunk size")
    parser.add_argument("--object-store-mib", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir, removed")
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

    baseline_mib = tree_pss_kib() / 1024
    init_ray(num_cpus=2, object_store_memory=args.object_store_mib * 1024**2)
    quiet_ray_data()
    ray_idle_mib = tree_pss_kib() / 1024
    small = prepared[args.rows]
    throughput = []
    for name, fn in [
        ("pyarrow read_table + slices, run 1", stream_pyarrow),
        ("Ray Data read_parquet + iter_torch_batches, run 1", stream_ray),
        ("pyarrow read_table + slices, run 2", stream_pyarrow),
        ("Ray Data read_parquet + iter_torch_batches, run 2", stream_ray),
    ]:
        rows, seconds, sampler = timed(lambda s, fn=fn: fn(small, args.batch_size, s))
        throughput.append((name, rows, seconds, sampler.peak_mib))
        print(f"{name}: {rows / seconds:,.0f} rows/s, peak {sampler.peak_mib:.0f} MiB", flush=True)

    streaming = []
    for rows_total in sizes:
        rows, seconds, sampler = timed(
            lambda s, r=rows_total: stream_ray(prepared[r], args.batch_size, s)
        )
        streaming.append((rows_total, rows, seconds, sampler))
        print(
            f"stream {rows:,} rows: {rows / seconds:,.0f} rows/s, peak {sampler.peak_mib:.0f} MiB"
        )

    report = render(args, prepare_rows, throughput, streaming, baseline_mib, ray_idle_mib,
                    load_before, os.getloadavg())  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    if args.workdir is None:
        shutil.rmtree(workdir)


def render(
    args: argparse.Namespace,
    prepare_rows: list[tuple[int, float, float]],
    throughput: list[tuple[str, int, float, float]],
    streaming: list[tuple[str, int, int, float, MemorySampler]],
    baseline_mib: float,
    ray_idle_mib: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    import ray

    lines = [
        "# Data throughput and memory",
        "",
        f"Synthetic census (39 features, 2 tasks), batch size {args.batch_size}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, emm-ray "
        f"{emm_ray.__version__}, Ray {ray.__version__}. Memory = PSS of the benchmark process "
        "and all its descendants (Ray's GCS, raylet, workers, object store pages), sampled "
        f"every 0.2 s. Load average (1/5/15 min) before {_load(load_before)}, "
        f"after {_load(load_after)}: the machine was shared, so timings are indicative.",
        "",
        "Command: `python benchmarks/data_throughput.py "
        f"--rows {args.rows} --big-rows {args.big_rows} --batch-size {args.batch_size}`",
        "",
        "## Prepare (generate + split + fit + encode + write parquet, streaming)",
        "",
        "| rows | seconds | rows/s | peak memory (MiB) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r:,} | {s:.1f} | {r / s:,.0f} | {p:.0f} |" for r, s, p in prepare_rows]
    lines += [
        "",
        f"## Reading the {throughput[0][1]:,}-row train split into `Batch`es",
        "",
        f"Process tree before Ray: {baseline_mib:.0f} MiB; with an idle local Ray "
        f"(2 CPUs, {args.object_store_mib} MiB object store): {ray_idle_mib:.0f} MiB.",
        "",
        "| path | rows | seconds | rows/s | peak memory (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {n} | {r:,} | {s:.2f} | {r / s:,.0f} | {p:.0f} |" for n, r, s, p in throughput]
    lines += [
        "",
        "## Streaming the train split through Ray Data: memory vs rows",
        "",
        "| dataset rows | train rows streamed | seconds | rows/s | peak memory (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {t:,} | {r:,} | {s:.1f} | {r / s:,.0f} | {m.peak_mib:.0f} |" for t, r, s, m in streaming
    ]
    total, _, _, sampler = streaming[-1]
    lines += [
        "",
        f"Memory over time while Ray Data streams the {total:,}-row dataset's train split "
        "(every ~10% of rows):",
        "",
        "| seconds | rows consumed | memory (MiB) |",
        "| ---: | ---: | ---: |",
    ]
    lines += [f"| {t:.1f} | {p:,} | {k / 1024:.0f} |" for t, p, k in _every_tenth(sampler.samples)]
    return "\n".join(lines) + "\n"


def _every_tenth(samples: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    if not samples:
        return []
    last = samples[-1][1] or 1
    picked, next_mark = [], 0.0
    for sample in samples:
        if sample[1] >= next_mark * last:
            picked.append(sample)
            next_mark += 0.1
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return picked


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


if __name__ == "__main__":
    main()
