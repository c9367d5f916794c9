"""What fusion costs compared with training PLE end to end, on the same data and hardware.

Trains, one after the other in one process with the same loop and settings (a fixed
number of epochs, no early stopping, so every model sees the same rows): the pool of
`fusion_benchmark.py` (four single-task members), the `emm` fused model over it, and PLE.
The fused model trains as the fuse stage trains it (`FuseSpec.fit_config`: the
correction's own lr, scored before training when it starts at the pool's ensemble), so
its time includes that extra validation pass.
Reports trainable parameters, wall time and CPU time (process time: robust to other
load on a shared machine), and the ratios fusion / PLE, with and without the pool's
training (the pool usually exists already: that is EMM's premise).

    python benchmarks/fusion_cost.py --epochs 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from fusion_benchmark import MEMBER_HPARAMS, POOLS  # the same pool, run as a script
from torch import nn

from emm_ray.baselines import build_baseline
from emm_ray.config import load_yaml_config
from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.data.streaming import load_split
from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.fusion.stage import FuseSpec
from emm_ray.models import build_model
from emm_ray.train.loop import TensorBatches, TrainConfig, fit, seed_everything

REPO = Path(__file__).resolve().parents[1]
MEMBERS = POOLS["census"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3, help="lr of the pool and of PLE")
    parser.add_argument(
        "--fusion-lr", type=float, default=3e-4, help="lr of the fused model's correction"
    )
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/fusion_cost.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prepared = prepare_dataset(
        DatasetConfig(name="census", source="real"),
        Path(tempfile.gettempdir()) / "emm-bench" / "census-real",
    )
    schema = prepared.schema
    train_data = load_split(prepared.path, "train")
    validation = load_split(prepared.path, "validation")
    config = TrainConfig(
        epochs=args.epochs, batch_size=2048, lr=args.lr, patience=None, num_threads=args.threads
    )

    def train(
        build: Callable[[], nn.Module], tasks: list[str], config: TrainConfig = config
    ) -> tuple[nn.Module, dict]:
        seed_everything(0)
        module = build()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fit(
            module,
            TensorBatches(train_data, config.batch_size, shuffle=True, seed=0),
            TensorBatches(validation, config.eval_batch_size_on("cpu")),
            [schema.task_index(t) for t in tasks],
            config,
            task_names=tasks,
        )
        return module, {
            "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu,
            "train_seconds": sum(h["train_seconds"] for h in result.history),
            "params": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "val_auc": result.best_score,
        }

    measured: dict[str, dict] = {}
    pool = []
    for architecture, position in MEMBERS:
        task = schema.task_names[position]
        model, stats = train(
            lambda a=architecture, t=task: build_model(a, schema, t, **MEMBER_HPARAMS[a]), [task]
        )
        measured[f"{architecture}_{task}"] = stats
        pool.append(PoolMember(f"{architecture}_{task}", model.eval()))
    fusion = load_yaml_config(REPO / "configs/fusion/emm.yaml", FusionConfig)
    fuse_config = FuseSpec(
        fusion=fusion, train=config.model_copy(update={"lr": args.fusion_lr})
    ).fit_config
    _, measured["emm (fusion only)"] = train(
        lambda: EMMModel(schema, pool, fusion), schema.task_names, fuse_config
    )
    _, measured["ple"] = train(lambda: build_baseline("ple", schema), schema.task_names)

    pool_names = [f"{a}_{schema.task_names[p]}" for a, p in MEMBERS]
    pool_total = {k: sum(measured[n][k] for n in pool_names) for k in ("wall", "cpu", "params")}
    fused, ple = measured["emm (fusion only)"], measured["ple"]
    lines = [
        "# Fusion cost vs PLE end to end (real census)",
        "",
        f"Same data (census train split, {len(train_data)} rows), same loop, {args.epochs} "
        f"epochs each without early stopping, batch 2048, Adam lr {args.lr} (the fused "
        f"model's correction: lr {args.fusion_lr}, validated once before training as the "
        f"fuse stage does), {args.threads} torch thread(s), "
        "one process, models trained one after the other on a shared 2-core CPU machine. "
        "CPU time is the process's own CPU seconds (robust to other load), wall time is not.",
        "",
        "| model | trainable params | wall s | CPU s | train-loop s | best val AUC (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for name, stats in measured.items():
        lines.append(
            f"| {name} | {stats['params']:,} | {stats['wall']:.1f} | {stats['cpu']:.1f} | "
            f"{stats['train_seconds']:.1f} | {stats['val_auc']:.4f} |"
        )
    lines += [
        f"| pool (4 members, total) | {pool_total['params']:,} | {pool_total['wall']:.1f} | "
        f"{pool_total['cpu']:.1f} | | |",
        "",
        "| ratio | trainable params | wall time | CPU time |",
        "|---|---|---|---|",
        f"| fusion / PLE | {fused['params'] / ple['params']:.2f} | "
        f"{fused['wall'] / ple['wall']:.2f} | {fused['cpu'] / ple['cpu']:.2f} |",
        "| (pool + fusion) / PLE | "
        f"{(fused['params'] + pool_total['params']) / ple['params']:.2f} | "
        f"{(fused['wall'] + pool_total['wall']) / ple['wall']:.2f} | "
        f"{(fused['cpu'] + pool_total['cpu']) / ple['cpu']:.2f} |",
    ]
    args.output.write_text("\n".join(lines) + "\n")
    print(args.output.read_text())


if __name__ == "__main__":
    main()
