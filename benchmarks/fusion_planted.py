"""Ablations on planted cross-task signal: does the cross-task path of AKF earn its gain?

Synthetic data from `tests/fusion/planted.py`: each task's label needs its own pair of
fields and, more weakly, every other task's pair; each pool member was trained on its
own task's fields only (the others out of vocabulary), as a team logging only its own
inputs would train it. So each task's missing signal lives in the other tasks' members,
and only a cross-task path can reach it. Per seed (data, pool and fusion all seeded),
the same rows as `fusion_benchmark.py`: pool members, `best-member`,
`ensemble-stacked`, `mlp-correction`, `akf-own-task` (`top_k: 0`), `emm`, `reference`,
with paired differences of `emm` against the ablations, and the same rows started from
the stacking over every member's logit (`-pool-stack`, `ensemble_inputs: pool`).

`--signal additive` plants the other tasks' tables as a weighted sum, which that stacking
can take by itself; `--signal magnitude` plants them through their magnitude, which no
weighted sum of the members' logits reaches.

    python benchmarks/fusion_planted.py --seeds 0 1 2 3 4
    python benchmarks/fusion_planted.py --seeds 0 1 2 3 4 --signal magnitude

Writes `benchmarks/results/fusion_planted[_magnitude].md` and its JSON twin `.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusion_benchmark import (  # noqa: E402
    ENSEMBLES,
    fused_variants,
    render,
    summary_rows,
    with_best_members,
)

from emm_ray.evaluation.metrics import score_module  # noqa: E402
from emm_ray.fusion import EMMModel  # noqa: E402
from emm_ray.fusion.stage import FuseSpec  # noqa: E402
from emm_ray.train.loop import TensorBatches, TrainConfig, fit, seed_everything  # noqa: E402
from tests.fusion.planted import (  # noqa: E402
    SMALL_MLP,
    planted_batch,
    planted_schema,
    trained_pool,
)

VARIANTS = (
    "emm",
    "reference",
    "mlp-correction",
    "akf-own-task",
    "emm-pool-stack",
    "mlp-correction-pool-stack",
    "akf-own-task-pool-stack",
    "emm-fresh-pool-stack",
    "mlp-correction-fresh-pool-stack",
    "akf-own-task-fresh-pool-stack",
)
logger = logging.getLogger("fusion_planted")


def run_seed(
    seed: int, tasks: int, rows: int, signal: str, train: TrainConfig
) -> list[dict[str, Any]]:
    schema = planted_schema(tasks)
    train_rows, validation, test = (
        planted_batch(schema, n, seed=100 * seed + offset, table_seed=7 + seed, signal=signal)
        for n, offset in ((rows, 1), (rows // 2, 2), (20_000, 3))
    )
    specs = [("mlp", f"task{t}", SMALL_MLP) for t in range(tasks)]
    started = time.perf_counter()
    pool = trained_pool(schema, train_rows, validation, specs)
    pool_seconds = (time.perf_counter() - started) / len(pool)
    out: list[dict[str, Any]] = []

    def record(
        name: str, kind: str, model: Any, tasks_: list[str], wall: float, **extra: Any
    ) -> None:
        indices = [schema.task_index(t) for t in tasks_]
        scored = {
            split: {
                r.task: r.auc for r in score_module(name, "fused", model, data, indices, tasks_)
            }
            for split, data in (("validation", validation), ("test", test))
        }
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        for task in tasks_:
            out.append(
                {
                    "model": name,
                    "kind": kind,
                    "task": task,
                    "auc": scored["test"][task],
                    "val_auc": scored["validation"][task],
                    "seed": seed,
                    "wall_seconds": wall,
                    "trainable_parameters": trainable,
                    "form": "",
                    **{"best_epoch": 0, "max_epochs": 0, "patience": None, **extra},
                }
            )

    for member in pool:
        record(member.name, "pool", member.model, [member.task], pool_seconds)
    configs = fused_variants()
    for ensemble in ("stacked", "pool-stacked"):
        start = EMMModel(
            schema,
            pool,
            configs["emm"][1].model_copy(update={**ENSEMBLES[ensemble], "correction": "none"}),
        )
        start.calibrate(TensorBatches(validation, 4096).batches(0))
        record(f"ensemble-{ensemble}", "ensemble", start, start.task_names, 0.0)
    for variant in VARIANTS:
        kind, config = configs[variant]
        settings = (
            FuseSpec(fusion=config, train=train).fit_config
            if config.prediction == "pool_residual"
            else train
        ).model_copy(update={"seed": seed})
        seed_everything(seed)
        model = EMMModel(schema, pool, config)
        started = time.perf_counter()
        result = fit(
            model,
            TensorBatches(train_rows, settings.batch_size, shuffle=True, seed=seed),
            TensorBatches(validation, 4096),
            model.task_indices,
            settings,
            task_names=model.task_names,
        )
        wall = time.perf_counter() - started
        record(
            variant,
            kind,
            model,
            model.task_names,
            wall,
            best_epoch=result.best_epoch,
            max_epochs=settings.epochs,
            patience=settings.patience,
        )
    logger.info("seed %d done", seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--signal", choices=("additive", "magnitude"), default="additive")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    suffix = "" if args.signal == "additive" else f"_{args.signal}"
    output = args.output or REPO / f"benchmarks/results/fusion_planted{suffix}.md"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    train = TrainConfig(
        epochs=args.epochs, batch_size=512, lr=args.lr, patience=args.patience, num_threads=1
    )
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        rows += run_seed(seed, args.tasks, args.rows, args.signal, train)
    rows = with_best_members(rows)
    notes = [
        f"Data: SYNTHETIC planted cross-task signal (tests/fusion/planted.py, signal "
        f"`{args.signal}`), {args.tasks} tasks, {args.rows} training rows, "
        f"{args.rows // 2} validation, 20,000 test; each "
        "seed draws new tables, rows and initialisations. Each member (an MLP) was trained "
        "on its own task's fields only, so each task's remaining signal is in the other "
        "tasks' members.",
        f"Training: early stopping on mean validation AUC (patience {args.patience}, cap "
        f"{args.epochs}), batch 512, Adam lr {args.lr} for every fused row (validated before "
        "training, per-task choice after it, as the fuse stage does); 1 torch thread.",
        "Rows as in fusion_census.md: (b) `ensemble-stacked`, (c) `mlp-correction`, "
        "(d) `akf-own-task` (`top_k: 0`), (e) `emm`, (f) `reference`; `-pool-stack` rows "
        "start from `ensemble-pool-stacked`, the stacking over every member's logit; "
        "`-fresh-pool-stack` rows add `embedding: fresh` (configs/fusion/emm-fresh.yaml).",
    ]
    title = f"Fusion ablations: planted cross-task signal ({args.signal})"
    output.write_text(render(rows, title, notes))
    output.with_suffix(".json").write_text(json.dumps(summary_rows(rows), indent=1) + "\n")
    print(output.read_text())


if __name__ == "__main__":
    main()
