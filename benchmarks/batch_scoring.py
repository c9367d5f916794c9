"""Batch scoring throughput (`pipelines/score.py`): rows/s with 1 and 2 scoring actors.

Trains the serving benchmark's small census pool, its fused model and registers it
(`serving.build_and_register`, synthetic census-shaped rows), writes `--rows` raw
synthetic rows (with a `row_id`) as parquet and as CSV, then scores each input with 1
and 2 actors (0.95 CPU, one torch thread each), side by side in one run, with the load
average before and after each. Rows/s counts the whole job: reading, encoding, the
fused forward, writing parquet.
Writes `benchmarks/results/batch_scoring.md` and `.json` (rows `{"input", "actors",
"rows", "seconds", "rows_per_s", "load_before", "load_after"}`).

    python benchmarks/batch_scoring.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from serving import REPO, RESULTS, build_and_register  # the serving benchmark's models

from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.data.synthetic import SyntheticGenerator
from emm_ray.runtime import init_ray
from emm_ray.serve.batch import ScoreJob, score_table

FILE_ROWS = 250_000
ACTOR_CPUS = 0.95  # two actors and the reading / writing tasks fit 2 CPUs; 1 torch thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="raw rows to score")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pool", type=Path, default=REPO / "configs/pools/census_small.yaml")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS / "batch_scoring.md")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emm-batch-"))
    tracking_uri = f"sqlite:///{workdir.resolve() / 'mlruns.db'}"
    init_ray()
    prepared = prepare_dataset(DatasetConfig(rows=20_000, seed=0), workdir / "data")
    models = build_and_register(prepared, args.pool, args.epochs, workdir, tracking_uri)
    inputs = write_inputs(workdir, args.rows)
    rows = []
    for kind, path in inputs.items():
        for actors in args.actors:
            load_before = os.getloadavg()[0]
            report = score_table(
                ScoreJob(
                    model_uri=models["fused"],
                    tracking_uri=tracking_uri,
                    input_path=str(path),
                    output_dir=str(workdir / f"scores-{kind}-{actors}"),
                    actors=actors,
                    cpus_per_actor=ACTOR_CPUS,
                )
            )
            rows.append(
                {
                    "input": kind,
                    "actors": actors,
                    "rows": report.rows,
                    "seconds": round(report.seconds, 2),
                    "rows_per_s": round(report.rows_per_s),
                    "load_before": round(load_before, 2),
                    "load_after": round(os.getloadavg()[0], 2),
                }
            )
            print(rows[-1], flush=True)
    write(args, rows)


def write_inputs(workdir: Path, rows: int) -> dict[str, Path]:
    """The same raw rows as a folder of parquet files and a folder of CSV files."""
    generator = SyntheticGenerator("census", seed=4321)
    folders = {"parquet": workdir / "raw-parquet", "csv": workdir / "raw-csv"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, rows, FILE_ROWS)):
        count = min(FILE_ROWS, rows - start)
        table = generator.table(count)
        table = table.append_column("row_id", pa.array(range(start, start + count), pa.int64()))
        pq.write_table(table, folders["parquet"] / f"part-{part:04d}.parquet")
        pacsv.write_csv(table, folders["csv"] / f"part-{part:04d}.csv")
    return folders


def write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    args.output.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Batch scoring throughput",
        "",
        f"`python benchmarks/batch_scoring.py --rows {args.rows}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores ({platform.machine()}), "
        "synthetic census-shaped rows (not real data), the serving benchmark's fused model "
        f"(pool `{args.pool.name}`), actors of {ACTOR_CPUS} CPU and one torch thread, whole "
        "job timed (read, encode, "
        "forward, write parquet).",
        "",
        "| input | actors | rows | seconds | rows/s | load before / after |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['input']} | {row['actors']} | {row['rows']:,} | {row['seconds']} | "
            f"{row['rows_per_s']:,} | {row['load_before']} / {row['load_after']} |"
        )
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
