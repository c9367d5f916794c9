"""Pool training: the same 4-member pool trained sequentially vs in parallel, one cluster.

Sequential: one member at a time, each given the whole cluster (all CPUs, the GPU).
Parallel: all members at once, each given an equal share (fractional CPUs/GPU).
Both run the same fixed number of epochs (no early stopping) on the same data, through
the real pool path (Ray Train + MLflow, each mode into its own fresh tracking store),
side by side in one process. Reports the wall-time ratio and, per member, training
throughput and the member's own Ray Train wall time.

    python benchmarks/pool_training.py                       # real census, census_small pool
    python benchmarks/pool_training.py --data prepared/x --epochs 3
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import ray

from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.runtime import init_ray
from emm_ray.train.pool import PoolReport, train_pool
from emm_ray.train.pool_spec import PoolSpec, load_pool_spec
from emm_ray.train.ray_job import WorkerResources

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def with_resources(spec: PoolSpec, epochs: int, resources: WorkerResources) -> PoolSpec:
    """The spec with fixed epochs and every member on `resources`."""
    members = tuple(m.model_copy(update={"resources": None}) for m in spec.members)
    train = spec.train.model_copy(update={"epochs": epochs, "patience": None})
    return spec.model_copy(update={"members": members, "train": train, "resources": resources})


def run(
    spec: PoolSpec, prepared: PreparedDataset, workdir: Path, max_concurrent: int | None
) -> PoolReport:
    return train_pool(
        spec,
        prepared,
        storage_path=workdir / "ray",
        tracking_uri=f"sqlite:///{workdir}/mlruns.db",
        max_concurrent=max_concurrent,
        force=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/pools/census_small.yaml")
    parser.add_argument(
        "--data", type=Path, default=None, help="prepared dir (default: real census)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if args.data is not None:
        prepared = PreparedDataset.load(args.data)
    else:
        target = Path(tempfile.gettempdir()) / "emm-bench" / "census-real"
        prepared = prepare_dataset(DatasetConfig(name="census", source="real"), target)
    init_ray(num_cpus=args.num_cpus)
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    spec = load_pool_spec(args.config)
    n = len(spec.members)
    whole = WorkerResources(cpu=cpus, gpu=min(gpus, 1.0))
    share = WorkerResources(cpu=cpus / n, gpu=min(gpus, 1.0) / n if gpus else 0.0)

    with tempfile.TemporaryDirectory() as tmp:
        sequential = run(
            with_resources(spec, args.epochs, whole),
            prepared,
            Path(tmp) / "sequential",
            max_concurrent=1,
        )
        parallel = run(
            with_resources(spec, args.epochs, share),
            prepared,
            Path(tmp) / "parallel",
            max_concurrent=None,
        )
    for report in (sequential, parallel):
        if report.failed:
            raise SystemExit(f"members failed: {[(m.name, m.error) for m in report.failed]}")

    device = "gpu" if gpus else "cpu"
    lines = [
        f"# Pool training: sequential vs parallel ({device})",
        "",
        f"Pool `{spec.name}` ({n} members), {args.epochs} epochs each, data "
        f"{prepared.split_info['dataset']} ({prepared.split_info['source']}, "
        f"{prepared.num_rows('train')} train rows); cluster {cpus:g} CPU, {gpus:g} GPU. "
        f"Sequential: one member at a time with {whole.cpu:g} CPU / {whole.gpu:g} GPU; "
        f"parallel: all at once with {share.cpu:g} CPU / {share.gpu:g} GPU each. "
        f"Load average at end {os.getloadavg()[0]:.1f} (shared machine).",
        "",
        "| mode | pool wall s | ratio |",
        "| --- | ---: | ---: |",
        f"| sequential | {sequential.wall_seconds:.1f} | 1.00 |",
        f"| parallel | {parallel.wall_seconds:.1f} | "
        f"{sequential.wall_seconds / parallel.wall_seconds:.2f}x faster |",
        "",
        "| member | architecture | task | seq samples/s | seq member wall s | "
        "par samples/s | par member wall s | seq val AUC | par val AUC |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s, p in zip(sequential.members, parallel.members, strict=True):
        lines.append(
            f"| {s.name} | {s.architecture} | {s.task} | {s.samples_per_s:,.0f} | "
            f"{s.wall_seconds:.1f} | {p.samples_per_s:,.0f} | {p.wall_seconds:.1f} | "
            f"{s.val_auc:.4f} | {p.val_auc:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    output = args.output or RESULTS / f"pool_training_{device}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)


if __name__ == "__main__":
    main()
