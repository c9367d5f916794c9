"""Streamed training ingest: Ray Data's read-ahead cap and the paced scheduling loop.

    python benchmarks/ingest_pacing.py                 # 2M rows, the five cells below
    python benchmarks/ingest_pacing.py --cells 64:on   # one cell

One pool member (MLP on CTR) trains one epoch on synthetic Ali-CCP rows streamed through
Ray Data and Ray Train, per cell `<read-ahead MiB>:<pacing on|off>` (`uncapped`: Ray
Data's default budget, half the object store). Each cell runs in a fresh process with
its own local Ray; `process_tree.TreeMonitor` gives the wall time, CPU seconds by process
role (the `SplitCoordinator` runs Ray Data's scheduling loop) and the peak PSS. Shows
what `cap_read_ahead` and `pacing.IdleBackoff` each change. Cells are appended to
`<tmp>/emm-bench/ingest/measured.jsonl` and skipped on rerun. Synthetic data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.gettempdir()) / "emm-bench" / "ingest"
CELLS = ("uncapped:off", "512:off", "512:on", "64:off", "64:on")
UNCAPPED_MIB = 1 << 20  # above half of any object store here: Ray Data's own budget binds
SHOWN_ROLES = ("ray::RayTrainWorker", "ray::SplitCoordinator")


def measure_in_child(rows: int, cell: str) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from process_tree import TreeMonitor

    buffer, pacing_on = cell.split(":")
    directory = WORK / f"{rows}-{cell.replace(':', '-')}"
    shutil.rmtree(directory, ignore_errors=True)  # a pool logged there would be reused
    directory.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{directory / 'mlruns.db'}"

    import emm_ray.data.pacing

    if pacing_on == "off":
        emm_ray.data.pacing.pace = lambda dataset: dataset  # streaming reads it per call
    from emm_ray.data.prepare import DatasetConfig, prepare_dataset
    from emm_ray.runtime import init_ray
    from emm_ray.train.loop import TrainConfig
    from emm_ray.train.pool import train_pool
    from emm_ray.train.pool_spec import MemberSpec, PoolSpec
    from emm_ray.train.ray_job import WorkerResources

    init_ray()
    data = DatasetConfig(name="ali_ccp", source="synthetic", rows=rows, seed=0, sparse_min_count=2)
    prepared = prepare_dataset(data, WORK / f"prepared-{rows}")
    buffer_mib = UNCAPPED_MIB if buffer == "uncapped" else int(buffer)
    spec = PoolSpec(
        name="ingest",
        train=TrainConfig(
            epochs=1, batch_size=2048, patience=None, num_threads=1, stream_buffer_mib=buffer_mib
        ),
        resources=WorkerResources(cpu=1.0),
        data_mode="stream",
        members=(MemberSpec(name="mlp_ctr", architecture="mlp", task="ctr"),),
    )
    load_before = os.getloadavg()[0]
    with TreeMonitor() as tree:
        started = time.perf_counter()
        report = train_pool(spec, prepared, storage_path=directory / "ray_results")
        wall = time.perf_counter() - started
    return {
        "rows": rows,
        "cell": cell,
        "read_ahead_mib": buffer,
        "pacing": pacing_on,
        "wall_s": wall,
        "cpu_s": tree.cpu_seconds,
        "cpu_by_role": tree.cpu_by_role,
        "peak_mib": tree.peak_mib,
        "auc": report.members[0].val_auc,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--cells", nargs="+", default=list(CELLS))
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/ingest_pacing.md")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "measured.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for cell in args.cells:
        if any(r["rows"] == args.rows and r["cell"] == cell for r in done):
            print(f"{args.rows} {cell}: measured before, kept", flush=True)
            continue
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as executor:
            row = executor.submit(measure_in_child, args.rows, cell).result()
        with log.open("a") as out:
            out.write(json.dumps(row) + "\n")
        done.append(row)
        write(args.output, done)
    write(args.output, done)


def write(output: Path, rows: list[dict[str, Any]]) -> None:
    output.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Streamed ingest: read-ahead cap and the paced Ray Data loop",
        "",
        "`python benchmarks/ingest_pacing.py` on 2 cores, 24 GiB. Synthetic Ali-CCP; one",
        "MLP member, one epoch, streamed through Ray Data and Ray Train. CPU by process role",
        "(the `SplitCoordinator` runs Ray Data's scheduling loop); peak: PSS of the whole",
        "process tree. Load: 1-minute load average before / after.",
        "",
        "| rows | read-ahead MiB | pacing | wall s | CPU s | train worker CPU s | "
        "SplitCoordinator CPU s | peak MiB | val AUC | load |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        worker, coordinator = (r["cpu_by_role"].get(role, 0.0) for role in SHOWN_ROLES)
        lines.append(
            f"| {r['rows']:,} | {r['read_ahead_mib']} | {r['pacing']} | {r['wall_s']:.0f} | "
            f"{r['cpu_s']:.0f} | {worker:.0f} | {coordinator:.0f} | {r['peak_mib']:,.0f} | "
            f"{r['auc']:.4f} | {r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
