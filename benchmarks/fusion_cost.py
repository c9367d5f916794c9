"""What fusion costs against training PLE end to end, to convergence, side by side in one run.

On real census, in one run and with the same loop, data and stopping rule (early
stopping on mean validation AUC with `--patience`, best weights restored, under caps
that must not bind), trains

- `pool`: the four members of `fusion_benchmark.py`'s census pool (what EMM assumes
  exists already; reported for the whole picture);
- `emm`: the shipped fused model over that pool (`configs/fusion/emm.yaml`: the stack's
  levels after the first re-run on the fused state), as the fuse stage trains it
  (`FuseSpec.fit_config`: its own lr, scored before training);
- `emm-fresh`: `configs/fusion/emm-fresh.yaml`, level 0 on a fresh embedding (the
  frozen blocks re-run on it every step: no level-0 precompute);
- `emm-frozen-pool`: `emm` with `component_input: none` (the pool runs once, fully
  precomputed);
- `ple`: PLE end to end, the best converged baseline of `fusion_census.md`.

Each model trains in its own child process (spawned one after the other, so nothing
runs beside it from this benchmark), which gives its own peak memory (the child's peak
RSS: data, model, optimiser, precomputed features). Per model: wall and CPU seconds of
`fit` (precomputing the pool's features included), epochs, and the same per epoch; the
load average before and after. Ratios fusion / PLE come from the same run. Writes
`benchmarks/results/fusion_cost.md` and its JSON twin `fusion_cost.json`.

With `--dataset ali_ccp` the same comparison runs on synthetic Ali-CCP (`--rows`, 5M by
default) streamed as the stages stream a large dataset: each model trains through
`run_train_job` on Ray Data shards in a child process that starts its own local Ray, the
fused models after storing their pool's logits beside the shards (a Ray Data actor
pool; timed, never reused from an earlier run); CPU and peak memory (PSS) are then
those of the child's process tree, Ray included.
Writes `fusion_cost_ali_ccp_stream.md` and `.json`.

Each finished model is appended to `<tmp>/emm-bench/fusion-cost-<data>/measured.jsonl`
(pool weights beside it) and skipped when the command is run again, so a run longer
than a session resumes; `--fresh` measures everything again.

    python benchmarks/fusion_cost.py
    python benchmarks/fusion_cost.py --dataset ali_ccp --rows 5000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from fusion_benchmark import MEMBER_HPARAMS, POOLS  # the same pool, run as a script

REPO = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.gettempdir()) / "emm-bench"
# Fused rows: name -> (the fusion config file, settings changed in it).
FUSED: dict[str, tuple[str, dict[str, str]]] = {
    "emm": ("emm.yaml", {}),
    "emm-frozen-pool": ("emm.yaml", {"component_input": "none"}),
    "emm-fresh": ("emm-fresh.yaml", {}),
}


@dataclass
class Measured:
    model: str
    epochs: int
    best_epoch: int
    wall_s: float
    cpu_s: float
    peak_mib: float
    load_before: float
    load_after: float
    trainable_params: int
    val_auc: float


def fused_config(fusion: tuple[str, dict[str, str]]) -> Any:
    """A `FUSED` entry as its `FusionConfig`."""
    from emm_ray.config import load_yaml_config
    from emm_ray.fusion import FusionConfig

    path, update = fusion
    return load_yaml_config(REPO / "configs/fusion" / path, FusionConfig).model_copy(update=update)


def train_in_child(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: build one model, fit it, report time and peak memory."""
    from emm_ray.baselines import build_baseline
    from emm_ray.data.prepare import PreparedDataset
    from emm_ray.data.streaming import load_split
    from emm_ray.fusion import EMMModel, PoolMember
    from emm_ray.fusion.stage import FuseSpec
    from emm_ray.models import build_model
    from emm_ray.train.loop import TensorBatches, TrainConfig, fit, seed_everything

    torch.set_num_threads(job["threads"])
    prepared = PreparedDataset.load(job["data"])
    schema = prepared.schema
    train_rows = load_split(prepared.path, "train")
    validation = load_split(prepared.path, "validation")
    config = TrainConfig.model_validate(job["train"])
    seed_everything(0)
    if job["kind"] == "member":
        module = build_model(job["architecture"], schema, job["task"], **job["hparams"])
        tasks = [job["task"]]
    elif job["kind"] == "ple":
        module = build_baseline("ple", schema)
        tasks = schema.task_names
    else:
        pool = []
        for name, architecture, task in job["pool"]:
            member = build_model(architecture, schema, task, **MEMBER_HPARAMS[architecture])
            state = torch.load(Path(job["pool_dir"]) / f"{name}.pt", weights_only=True)
            member.load_state_dict(state)
            pool.append(PoolMember(name, member.eval()))
        fusion = fused_config(job["fusion"])
        config = FuseSpec(fusion=fusion, train=config).fit_config
        module = EMMModel(schema, pool, fusion)
        tasks = module.task_names
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit(
        module,
        TensorBatches(train_rows, config.batch_size, shuffle=True, seed=0),
        TensorBatches(validation, config.eval_batch_size_on("cpu")),
        [schema.task_index(t) for t in tasks],
        config,
        task_names=tasks,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if job["kind"] == "member":
        torch.save(result.best_state, Path(job["pool_dir"]) / f"{job['name']}.pt")
    return asdict(
        Measured(
            model=job["name"],
            epochs=len(result.history),
            best_epoch=result.best_epoch,
            wall_s=wall,
            cpu_s=cpu,
            peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            load_before=load_before,
            load_after=os.getloadavg()[0],
            trainable_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
            val_auc=result.best_score,
        )
    )


def train_streamed_in_child(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process that starts its own local Ray: one model trained as the
    stages train a streamed dataset (`run_train_job`, Ray Data shards; a fused model first
    stores its pool's logits beside the shards with a Ray Data actor pool). CPU and peak
    memory are those of the process tree (this process, Ray's processes, its workers)."""
    from process_tree import TreeMonitor

    from emm_ray.baselines.stage import BaselineFactory
    from emm_ray.data.schema import FeatureSchema
    from emm_ray.fusion.stage import FusedModelFactory, FuseSpec, MemberWeights
    from emm_ray.runtime import init_ray
    from emm_ray.train.loop import TrainConfig
    from emm_ray.train.members import ZooModelFactory
    from emm_ray.train.ray_job import TrainJob, WorkerResources, run_train_job

    init_ray()
    schema = FeatureSchema.load(job["data"])
    config = TrainConfig.model_validate(job["train"])
    precompute: dict[str, Any] = {}
    module = None
    if job["kind"] == "member":
        factory: Any = ZooModelFactory(job["architecture"], job["task"], job["hparams"])
        tasks = (job["task"],)
    elif job["kind"] == "ple":
        factory = BaselineFactory("ple", tuple(schema.task_names), {})
        tasks = tuple(schema.task_names)
    else:
        members = tuple(
            MemberWeights(
                name,
                architecture,
                task,
                MEMBER_HPARAMS[architecture],
                torch.load(Path(job["pool_dir"]) / f"{name}.pt", weights_only=True),
                {},
            )
            for name, architecture, task in job["pool"]
        )
        fusion = fused_config(job["fusion"])
        config = FuseSpec(fusion=fusion, train=config).fit_config
        factory = FusedModelFactory(members, fusion)
        module = factory(schema)
        tasks = tuple(module.task_names)
        precompute = {
            "precompute_key": module.precompute_key(module.stored_names()),
            "precompute_features": tuple(module.stored_names()),
        }
        # storing the pool's logits is part of fusion's cost: never time a reused store
        shutil.rmtree(Path(job["data"]) / "precomputed" / precompute["precompute_key"], True)
    module = module or factory(schema)
    train_job = TrainJob(
        name=job["name"],
        module_factory=factory,
        data_dir=job["data"],
        tasks=tasks,
        config=config,
        storage_path=tempfile.mkdtemp(prefix="fusion-cost-ray-"),
        resources=WorkerResources(cpu=1.0),
        data_mode="stream",
        **precompute,
    )
    load_before = os.getloadavg()[0]
    with TreeMonitor() as tree:
        wall = time.perf_counter()
        outcome = run_train_job(train_job)
        wall = time.perf_counter() - wall
    if job["kind"] == "member":
        torch.save(outcome.state_dict, Path(job["pool_dir"]) / f"{job['name']}.pt")
    return asdict(
        Measured(
            model=job["name"],
            epochs=len(outcome.history),
            best_epoch=outcome.best_epoch,
            wall_s=wall,
            cpu_s=tree.cpu_seconds,
            peak_mib=tree.peak_mib,
            load_before=load_before,
            load_after=os.getloadavg()[0],
            trainable_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
            val_auc=outcome.best_score,
        )
    )


def run(job: dict[str, Any]) -> Measured:
    child = train_streamed_in_child if job["mode"] == "stream" else train_in_child
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as executor:
        return Measured(**executor.submit(child, job).result())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40, help="cap of the pool and PLE")
    parser.add_argument("--fusion-epochs", type=int, default=30, help="cap of fused models")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3, help="lr of the pool and of PLE")
    parser.add_argument("--fusion-lr", type=float, default=3e-4, help="lr of the correction")
    parser.add_argument(
        "--dataset",
        choices=["census", "ali_ccp"],
        default="census",
        help="census: the real file, in memory; ali_ccp: synthetic (--rows), streamed",
    )
    parser.add_argument("--rows", type=int, default=5_000_000, help="synthetic ali_ccp rows")
    parser.add_argument("--fused", nargs="+", choices=list(FUSED), default=list(FUSED))
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--fresh", action="store_true", help="measure every model again (else resume the run)"
    )
    args = parser.parse_args()

    from emm_ray.data.prepare import DatasetConfig, prepare_dataset

    if args.dataset == "census":
        mode = "memory"
        prepared = prepare_dataset(
            DatasetConfig(name="census", source="real"), WORK / "census-real"
        )
        args.output = args.output or REPO / "benchmarks/results/fusion_cost.md"
    else:
        mode = "stream"
        prepared = prepare_dataset(
            DatasetConfig(name="ali_ccp", rows=args.rows, seed=0),
            WORK / f"ali_ccp-synthetic-{args.rows}",
        )
        args.output = args.output or REPO / "benchmarks/results/fusion_cost_ali_ccp_stream.md"
    args.mode = mode
    schema = prepared.schema
    pool_dir = WORK / f"fusion-cost-{prepared.path.name}"
    pool_dir.mkdir(parents=True, exist_ok=True)
    finished = pool_dir / "measured.jsonl"
    if args.fresh:
        finished.unlink(missing_ok=True)
    done = {
        row["model"]: Measured(**row)
        for row in map(json.loads, finished.read_text().splitlines() if finished.exists() else [])
    }

    def measure(job: dict[str, Any]) -> Measured:
        """A model measured earlier in this run is read back (its weights, if a pool
        member, are still in `pool_dir`); others are trained and appended."""
        if job["name"] in done:
            print(f"{job['name']}: measured before, kept", flush=True)
            return done[job["name"]]
        measured = run(job)
        with finished.open("a") as log:
            log.write(json.dumps(asdict(measured)) + "\n")
        return measured

    common = {
        "data": str(prepared.path),
        "threads": args.threads,
        "pool_dir": str(pool_dir),
        "mode": mode,
    }
    train = {
        "epochs": args.epochs,
        "batch_size": 2048,
        "lr": args.lr,
        "patience": args.patience,
        "num_threads": args.threads,
    }
    members = POOLS[args.dataset]
    pool = [(f"{a}_{schema.task_names[p]}", a, schema.task_names[p]) for a, p in members]
    measured: list[Measured] = []
    for name, architecture, task in pool:
        measured.append(
            measure(
                {
                    **common,
                    "kind": "member",
                    "name": name,
                    "architecture": architecture,
                    "task": task,
                    "hparams": MEMBER_HPARAMS[architecture],
                    "train": train,
                }
            )
        )
    fusion_train = {**train, "epochs": args.fusion_epochs, "lr": args.fusion_lr}
    for name in args.fused:
        job = {**common, "kind": "fused", "name": name, "pool": pool, "train": fusion_train}
        measured.append(measure({**job, "fusion": FUSED[name]}))
    measured.append(measure({**common, "kind": "ple", "name": "ple", "train": train}))
    write(args, measured, len(pool), prepared.num_rows("train"))


def rows_of(measured: list[Measured], pool_size: int) -> list[dict[str, Any]]:
    """The JSON twin's rows: every model per epoch and to convergence; the pool summed."""
    members, others = measured[:pool_size], measured[pool_size:]
    pool = Measured(
        model="pool",
        epochs=sum(m.epochs for m in members),
        best_epoch=0,
        wall_s=sum(m.wall_s for m in members),
        cpu_s=sum(m.cpu_s for m in members),
        peak_mib=max(m.peak_mib for m in members),
        load_before=members[0].load_before,
        load_after=members[-1].load_after,
        trainable_params=sum(m.trainable_params for m in members),
        val_auc=float("nan"),
    )
    rows = []
    for m in [*others, pool]:
        for scope, divisor in (("per_epoch", m.epochs), ("to_convergence", 1)):
            rows.append(
                {
                    "model": m.model,
                    "scope": scope,
                    "epochs": m.epochs,
                    "wall_s": round(m.wall_s / divisor, 3),
                    "cpu_s": round(m.cpu_s / divisor, 3),
                    "peak_mib": round(m.peak_mib, 1),
                    "load_before": round(m.load_before, 2),
                    "load_after": round(m.load_after, 2),
                }
            )
    return rows


def write(args: argparse.Namespace, measured: list[Measured], pool_size: int, rows: int) -> None:
    by_name = {m.model: m for m in measured}
    ple = by_name["ple"]
    if args.mode == "memory":
        title = "real census"
        setting = (
            f"census train split ({rows:,} rows) in memory, every model in its own child "
            f"process one after the other, {args.threads} torch thread(s)"
        )
        memory = "peak memory is the child process's peak RSS (data, model, optimiser, features)"
        load = "a load near 2 means another job shared the 2 cores"
    else:
        title = f"synthetic Ali-CCP, {args.rows:,} rows, streamed"
        setting = (
            f"SYNTHETIC Ali-CCP train split ({rows:,} rows) streamed by Ray Data as the stages "
            "stream it (`run_train_job`, one Ray Train worker of 1 CPU; the fused model first "
            "stores its pool's logits beside the shards with a Ray Data actor pool), every "
            "model in its own child process that starts its own local Ray"
        )
        memory = (
            "CPU seconds and peak memory are those of the child's whole process tree (Ray's "
            "GCS, raylet, workers: about 1 GB of it is Ray itself), memory as PSS summed "
            "over its processes"
        )
        load = (
            "a streamed model keeps both cores busy itself (its trainer and Ray Data's "
            "reads), so loads of 2-4 are its own, and a load before above 1 is the previous "
            "model's tail (each starts when the previous one ends)"
        )
    lines = [
        f"# Fusion cost vs PLE, to convergence ({title})",
        "",
        f"One run on {platform.machine()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}: {setting}, batch 2048, early stopping on mean "
        f"validation AUC with patience {args.patience}, caps {args.epochs} (pool, PLE; Adam "
        f"lr {args.lr}) and {args.fusion_epochs} (fused; lr {args.fusion_lr}, scored before "
        "training as the fuse stage does). Wall and CPU seconds are those of training "
        f"(precomputing the frozen pool's features included); {memory}. Load average (1 "
        f"min) before and after each model: {load} (a run resumed in a later session "
        "measured its models at different times).",
        "",
        "| model | epochs (best) | trainable params | wall s | CPU s | wall s / epoch | "
        "CPU s / epoch | peak MiB | val AUC | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in measured:
        lines.append(
            f"| {m.model} | {m.epochs} ({m.best_epoch}) | {m.trainable_params:,} | "
            f"{m.wall_s:.1f} | {m.cpu_s:.1f} | {m.wall_s / m.epochs:.1f} | "
            f"{m.cpu_s / m.epochs:.1f} | {m.peak_mib:.0f} | {m.val_auc:.4f} | "
            f"{m.load_before:.2f} / {m.load_after:.2f} |"
        )
    lines += [
        "",
        "| ratio to PLE | wall, to convergence | CPU, to convergence | wall / epoch | "
        "CPU / epoch | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.fused:
        m = by_name[name]
        lines.append(
            f"| {name} / ple | {m.wall_s / ple.wall_s:.2f} | {m.cpu_s / ple.cpu_s:.2f} | "
            f"{(m.wall_s / m.epochs) / (ple.wall_s / ple.epochs):.2f} | "
            f"{(m.cpu_s / m.epochs) / (ple.cpu_s / ple.epochs):.2f} | "
            f"{m.peak_mib / ple.peak_mib:.2f} |"
        )
    args.output.write_text("\n".join(lines) + "\n")
    json_path = args.output.with_suffix(".json")
    json_path.write_text(json.dumps(rows_of(measured, pool_size), indent=1) + "\n")
    print(args.output.read_text())


if __name__ == "__main__":
    main()
