"""Out of core: synthetic Ali-CCP through prepare -> pool (2 members) -> fuse, streamed.

    python benchmarks/scale.py                                  # 2M stream + memory, 20M stream
    python benchmarks/scale.py --sizes 2000000 --modes stream   # one cell
    python benchmarks/scale.py --sparse-max-ids 60000           # same, vocabularies capped

Each (rows, mode) runs the real stages (`prepare_dataset`, `train_pool`, `fuse_pool`,
with a SQLite MLflow store) in a fresh process that starts its own local Ray, so the
process tree sampled per stage (`process_tree.TreeMonitor`: PSS of the driver, Ray's
processes and every worker) is this run's whole footprint. The two members train one
after the other with a whole CPU each, one epoch, then the fused model (the shipped
`configs/fusion/emm.yaml`: it starts at the pool's ensemble) one epoch
(streamed: the members' logits are first stored beside the shards by a Ray Data actor
pool). Ray Data reads at most `TrainConfig.stream_buffer_mib` (512 MiB by default) ahead
of training and of that actor pool. Rows/s: rows handled over the stage's wall time
(prepare: rows written; pool: training rows x members; fuse: training rows). AUC:
validation AUC (pool: the mean of the members'). A size's prepared data is shared by
its modes and prepared by the first. `--sparse-max-ids N` prepares with every sparse
field's vocabulary capped at its N most frequent ids (`DatasetConfig.sparse_max_ids`), so
the models are about the same size at every row count and the peaks compare the data
path alone; uncapped, the synthetic vocabularies (and the embedding tables) grow with
the rows. Training seeds after the first (`--seeds`) run at
sizes up to 2M only, after every first-seed cell: they give the seed noise that the
stream-memory difference is read against.

Finished cells are appended to `<tmp>/emm-bench/scale/measured.jsonl` and skipped on
rerun (delete a line to measure it again); a row's `beside` field, added by hand, says
what else ran during that stage and is printed under the table. Writes
`benchmarks/results/scale.md` and `scale.json` (rows `{"rows", "mode", "stage",
"rows_per_s", "peak_mib", "auc", ...}`).
Synthetic data: label such results synthetic.
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
WORK = Path(tempfile.gettempdir()) / "emm-bench" / "scale"
MEMBERS = (("mlp_ctr", "mlp", "ctr"), ("deepfm_ctcvr", "deepfm", "ctcvr"))
MEMORY_ROWS = 2_000_000
TRAIN = {"epochs": 1, "batch_size": 2048, "lr": 2e-3, "patience": None, "num_threads": 1}


def measure_in_child(rows: int, mode: str, seed: int, max_ids: int | None) -> list[dict[str, Any]]:
    """One (rows, mode, seed, max_ids) cell: every stage, each under its own process-tree
    monitor."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from process_tree import TreeMonitor

    capped = "" if max_ids is None else f"-ids{max_ids}"
    cell = WORK / (f"{rows}{capped}-{mode}" + (f"-seed{seed}" if seed else ""))
    shutil.rmtree(cell, ignore_errors=True)  # runs logged there would be reused, not measured
    cell.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{cell / 'mlruns.db'}"

    from emm_ray.config import load_yaml_config
    from emm_ray.data.prepare import DatasetConfig, prepare_dataset
    from emm_ray.fusion.config import FusionConfig
    from emm_ray.fusion.stage import FuseSpec, fuse_pool
    from emm_ray.runtime import init_ray
    from emm_ray.train.loop import TrainConfig
    from emm_ray.train.pool import train_pool
    from emm_ray.train.pool_spec import MemberSpec, PoolSpec
    from emm_ray.train.ray_job import WorkerResources

    init_ray()
    data = DatasetConfig(
        name="ali_ccp",
        source="synthetic",
        rows=rows,
        seed=0,
        sparse_min_count=2,
        sparse_max_ids=max_ids,
    )
    measured: list[dict[str, Any]] = []

    def stage(name: str, work: Any) -> Any:
        load_before = os.getloadavg()[0]
        with TreeMonitor() as tree:
            started = time.perf_counter()
            result = work()
            wall = time.perf_counter() - started
        measured.append(
            {
                "rows": rows,
                "mode": mode,
                "seed": seed,
                "sparse_max_ids": max_ids,
                "stage": name,
                "wall_s": wall,
                "cpu_s": tree.cpu_seconds,
                "peak_mib": tree.peak_mib,
                "peak_by_role": tree.peak_by_role,
                "cpu_by_role": tree.cpu_by_role,
                "load_before": load_before,
                "load_after": os.getloadavg()[0],
            }
        )
        return result

    prepared_dir = WORK / f"prepared-{rows}{capped}"
    fresh = not (prepared_dir / "split.json").is_file()
    prepared = stage("prepare", lambda: prepare_dataset(data, prepared_dir))
    if not fresh:
        measured.pop()  # prepared for the size's first mode: measured there
    else:
        measured[-1] |= {"rows_per_s": rows / measured[-1]["wall_s"], "auc": None}
    train_rows = prepared.num_rows("train")

    resources = WorkerResources(cpu=1.0)
    train = TrainConfig(**TRAIN, seed=seed)
    pool = PoolSpec(
        name=f"scale-{mode}",
        train=train,
        resources=resources,
        data_mode=mode,
        max_concurrent=1,
        members=tuple(MemberSpec(name=n, architecture=a, task=t) for n, a, t in MEMBERS),
    )
    storage = cell / "ray_results"
    report = stage("pool", lambda: train_pool(pool, prepared, storage_path=storage))
    if report.failed:
        raise RuntimeError(f"pool failed: {[m.error for m in report.failed]}")
    aucs = [m.val_auc for m in report.members]
    measured[-1] |= {
        "rows_per_s": train_rows * len(MEMBERS) / measured[-1]["wall_s"],
        "auc": sum(aucs) / len(aucs),
        "member_auc": {m.name: m.val_auc for m in report.members},
    }

    spec = FuseSpec(
        name=f"scale-{mode}",
        fusion=load_yaml_config(REPO / "configs/fusion/emm.yaml", FusionConfig),
        train=train,
        resources=resources,
        data_mode=mode,
    )
    fused = stage("fuse", lambda: fuse_pool(spec, prepared, storage_path=storage))
    measured[-1] |= {"rows_per_s": train_rows / measured[-1]["wall_s"], "auc": fused.val_auc}
    for row in measured:
        row["vocabulary"] = sum(prepared.schema.cardinalities)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument("--modes", nargs="+", default=["stream", "memory"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sparse-max-ids", type=int, default=None)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/scale.md")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "measured.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    max_ids = args.sparse_max_ids
    for seed, rows, mode in cells(args.seeds, args.sizes, args.modes):
        if any(key(r) == (rows, mode, seed, max_ids) for r in done):
            print(f"{rows} {mode} seed {seed} cap {max_ids}: measured before, kept", flush=True)
            continue
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as executor:
            cell = executor.submit(measure_in_child, rows, mode, seed, max_ids).result()
        with log.open("a") as out:
            out.writelines(json.dumps(r) + "\n" for r in cell)
        done += cell
        write(args.output, done)
    write(args.output, done)


def cells(seeds: list[int], sizes: list[int], modes: list[str]) -> list[tuple[int, int, str]]:
    """(seed, rows, mode) in run order: every size at the first seed, then the further
    seeds at sizes up to 2M. Memory mode holds every split in each worker, so it runs only
    where that fits (the 2M check)."""
    return [
        (seed, rows, mode)
        for index, seed in enumerate(seeds)
        for rows in sizes
        if index == 0 or rows <= MEMORY_ROWS
        for mode in modes
        if mode == "stream" or rows <= MEMORY_ROWS
    ]


def write(output: Path, rows: list[dict[str, Any]]) -> None:
    output.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Out of core: synthetic Ali-CCP, prepare -> pool (2 members) -> fuse",
        "",
        "`python benchmarks/scale.py` on 2 cores, 24 GiB. Synthetic data (Ali-CCP schema).",
        "One epoch per model; members one after the other, a whole CPU each. Peak: PSS of",
        "the whole process tree (driver, Ray, workers) during the stage. AUC: validation",
        "(pool: mean of the 2 members). Load: 1-minute load average before / after.",
        "Fused model: the shipped `configs/fusion/emm.yaml`. Ray Data reads at most 512 MiB",
        "ahead (`TrainConfig.stream_buffer_mib`) and its scheduling loop is paced",
        "(`emm_ray/data/pacing.py`). CPU and peak by process role are in the JSON twin.",
        "",
        "Ids cap: `sparse_max_ids` (most frequent ids kept per sparse field; - = uncapped);",
        "vocabulary: ids over all sparse fields, which sets the embedding tables' size.",
        "",
        "| rows | ids cap | vocabulary | mode | seed | stage | wall s | CPU s | rows/s | "
        "peak MiB | AUC | load |",
        "| ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        auc = "" if r.get("auc") is None else f"{r['auc']:.4f}"
        cap = "-" if r.get("sparse_max_ids") is None else f"{r['sparse_max_ids']:,}"
        vocabulary = f"{r['vocabulary']:,}" if r.get("vocabulary") else ""
        lines.append(
            f"| {r['rows']:,} | {cap} | {vocabulary} | {r['mode']} | {r.get('seed', 0)} | "
            f"{r['stage']} | "
            f"{r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['rows_per_s']:,.0f} | "
            f"{r['peak_mib']:,.0f} | {auc} | {r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    notes: dict[str, list[str]] = {}
    for r in rows:
        for field in ("beside", "note"):
            if r.get(field):
                notes.setdefault(r[field], []).append(
                    f"{r['rows']:,} {r['mode']} seed {r.get('seed', 0)} {r['stage']}"
                )
    beside = [f"- {'; '.join(where)}: {text}" for text, where in notes.items()]
    output.write_text(
        "\n".join(lines + ["", *summary(rows), *beside, *peak_breakdown(rows)]) + "\n"
    )


def peak_breakdown(rows: list[dict[str, Any]], shown: int = 5) -> list[str]:
    """Who held the memory at each streamed first-seed stage's peak (PSS by process role)."""
    lines = []
    for r in rows:
        if r["mode"] != "stream" or r.get("seed", 0) != 0 or not r.get("peak_by_role"):
            continue
        top = sorted(r["peak_by_role"].items(), key=lambda item: -item[1])[:shown]
        held = ", ".join(f"`{name}` {mib:,.0f}" for name, mib in top)
        cap = f", ids capped at {r['sparse_max_ids']:,}" if r.get("sparse_max_ids") else ""
        lines.append(f"- At the {r['rows']:,}-row{cap} {r['stage']} peak (MiB): {held}")
    if lines:
        lines.insert(0, "\nWhere the streamed peaks were, by process role:\n")
    return lines


def key(row: dict[str, Any]) -> tuple[int, str, int, int | None]:
    """(rows, mode, seed, ids cap) of a measured row; rows from before seeds or caps were
    recorded are seed 0, uncapped."""
    return row["rows"], row["mode"], row.get("seed", 0), row.get("sparse_max_ids")


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Peak of the whole run per size (streamed, first seed) against the smallest size's,
    and the stream - memory AUC difference per seed beside the spread between seeds."""
    lines = []
    for cap in sorted({r.get("sparse_max_ids") or 0 for r in rows}):
        streamed = [
            r for r in rows if r["mode"] == "stream" and r.get("sparse_max_ids") == (cap or None)
        ]
        peaks: dict[int, dict[int, float]] = {}
        for r in streamed:
            by_seed = peaks.setdefault(r["rows"], {})
            by_seed[r.get("seed", 0)] = max(by_seed.get(r.get("seed", 0), 0.0), r["peak_mib"])
        if len(peaks) < 2:
            continue
        smallest = min(peaks)
        capped = f"ids capped at {cap:,} a field" if cap else "vocabularies uncapped"
        for size, by_seed in sorted(peaks.items()):
            if size == smallest or 0 not in by_seed:
                continue
            against = ", ".join(
                f"{by_seed[0] / peak:.2f}x that of seed {seed} at {smallest:,} rows ({peak:,.0f})"
                for seed, peak in sorted(peaks[smallest].items())
            )
            lines.append(
                f"- Peak of the streamed run at {size:,} rows ({capped}): "
                f"{by_seed[0]:,.0f} MiB, {against}"
            )
    for stage in ("pool", "fuse"):
        auc = {
            (r["mode"], r.get("seed", 0)): r["auc"]
            for r in rows
            if r["rows"] == MEMORY_ROWS and r["stage"] == stage and not r.get("sparse_max_ids")
        }
        seeds = sorted({s for _, s in auc if ("stream", s) in auc and ("memory", s) in auc})
        if not seeds:
            continue
        differences = ", ".join(
            f"{auc['stream', s] - auc['memory', s]:+.4f} (seed {s})" for s in seeds
        )
        spreads = []
        for mode in ("stream", "memory"):
            values = [v for (m, _), v in auc.items() if m == mode]
            if len(values) > 1:
                spreads.append(f"{mode} {max(values) - min(values):.4f}")
        between = f"; between seeds: {', '.join(spreads)}" if spreads else ""
        lines.append(
            f"- {stage} AUC at {MEMORY_ROWS:,} rows, stream - memory: {differences}{between}"
        )
    return lines


if __name__ == "__main__":
    main()
