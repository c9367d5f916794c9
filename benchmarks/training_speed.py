"""Training speed: torch-rechub's `MTLTrainer` vs emm-ray's loop, same model size and data.

The model is torch-rechub's census Shared-Bottom (its `examples/ranking/run_census.py`):
every field embedded in 4 dims, a shared `[117]` bottom and one `[8]` tower per task,
each MLP layer `Linear -> BatchNorm -> ReLU`. Runs, side by side in one process on the
same encoded census splits (validation carved from the training file):

1. torch-rechub: `DataGenerator` (a per-row `Dataset` + `DataLoader`) and `MTLTrainer`,
   batch 1024, lr 1e-3, weight decay 1e-4 — its census example's settings;
2. emm-ray's loop training *the same torch-rechub model object* (a thin adapter feeds
   it column views): isolates what the loop and the tensor data path change;
3. emm-ray's loop with an emm-native module of identical layers, BatchNorm included
   (one embedding gather for all fields), at batch 1024 and at emm's default 2048;
4. emm-ray's own Shared-Bottom baseline (`build_baseline("shared_bottom")`) at the same
   widths (embed 4, bottom [117], towers [8]): what a user of emm-ray trains. Its layers
   are `Linear -> ReLU`, as every emm-ray MLP (no BatchNorm), so it has 266 fewer
   parameters (the BatchNorm affine pairs): 19,930 vs 20,196.

Every trainer runs once per seed, the seeds interleaved (seed 0 for all trainers, then
seed 1...), so a slow spell on a shared machine hits all of them. Throughput counts
training steps only: the median over all epochs of all seeds of rows / time inside the
epoch's training pass; wall time (mean over seeds) includes each trainer's validation
passes. AUCs are on the held-out test split, of the model each trainer hands back (emm-ray:
the best epoch by validation AUC; torch-rechub, never stopping early: the last epoch), mean
and range over seeds.

    pip install -e .[bench]          # torch-rechub
    python benchmarks/training_speed.py --epochs 10 --seeds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # torch-rechub's progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from emm_ray.baselines import build_baseline  # noqa: E402
from emm_ray.data.batch import Batch  # noqa: E402
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset  # noqa: E402
from emm_ray.data.schema import FeatureSchema  # noqa: E402
from emm_ray.data.streaming import load_split  # noqa: E402
from emm_ray.models.base import FieldEmbedding  # noqa: E402
from emm_ray.train.loop import (  # noqa: E402
    TensorBatches,
    TrainConfig,
    evaluate,
    fit,
    seed_everything,
)

RESULTS = Path(__file__).resolve().parent / "results"
EMBED_DIM, BOTTOM, TOWER = 4, 117, 8


@dataclass
class Splits:
    train: Batch
    validation: Batch
    test: Batch


@dataclass
class Run:
    """One trainer, one seed: per-epoch training throughput, wall time, final AUCs."""

    epoch_samples_per_s: list[float]
    wall_s: float
    aucs: list[float]


@dataclass
class Trainer:
    """One row of the table: how to run it for a seed, and its runs so far."""

    trainer: str
    model: str
    batch: int
    run: Callable[[int], Run]
    runs: list[Run] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return float(np.median([s for r in self.runs for s in r.epoch_samples_per_s]))

    def auc_cell(self, task: int) -> str:
        values = [r.aucs[task] for r in self.runs]
        if len(values) == 1:
            return f"{values[0]:.4f}"
        return f"{np.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def mlp_layer(in_dim: int, out_dim: int) -> nn.Sequential:
    """torch-rechub's MLP layer: Linear -> BatchNorm1d -> ReLU (dropout 0)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU())


class NativeSharedBottom(nn.Module):
    """torch-rechub's census Shared-Bottom, sized identically, as an emm-ray module."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.embedding = FieldEmbedding(schema.cardinalities, EMBED_DIM)
        width = EMBED_DIM * len(schema.sparse) + len(schema.dense)
        self.bottom = mlp_layer(width, BOTTOM)
        self.towers = nn.ModuleList(
            nn.Sequential(mlp_layer(BOTTOM, TOWER), nn.Linear(TOWER, 1)) for _ in schema.tasks
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        state = torch.cat([self.embedding(sparse).flatten(1), dense], dim=1)
        shared = self.bottom(state)
        return torch.cat([tower(shared) for tower in self.towers], dim=1)


class RechubAdapter(nn.Module):
    """Feeds a torch-rechub model `{field: column}` views of `(sparse, dense)`.

    torch-rechub models end in a sigmoid; the adapter returns the logit of that
    probability so emm-ray's loss (BCE with logits) equals torch-rechub's BCE.
    """

    def __init__(self, model: nn.Module, schema: FeatureSchema) -> None:
        super().__init__()
        self.model = model
        self.sparse_names = schema.sparse_names
        self.dense_names = schema.dense_names

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x = {name: sparse[:, i] for i, name in enumerate(self.sparse_names)}
        x.update({name: dense[:, i] for i, name in enumerate(self.dense_names)})
        return torch.logit(self.model(x), eps=1e-7)


def rechub_model(schema: FeatureSchema) -> nn.Module:
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import SharedBottom

    features = [
        SparseFeature(f.name, f.cardinality, embed_dim=EMBED_DIM) for f in schema.sparse
    ] + [DenseFeature(name) for name in schema.dense_names]
    return SharedBottom(
        features,
        ["classification"] * len(schema.tasks),
        bottom_params={"dims": [BOTTOM]},
        tower_params_list=[{"dims": [TOWER]} for _ in schema.tasks],
    )


def columns(batch: Batch, schema: FeatureSchema) -> dict[str, np.ndarray]:
    x = {name: batch.sparse[:, i].numpy() for i, name in enumerate(schema.sparse_names)}
    x.update({name: batch.dense[:, i].numpy() for i, name in enumerate(schema.dense_names)})
    return x


def run_rechub(schema: FeatureSchema, splits: Splits, epochs: int, device: str, seed: int) -> Run:
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    seed_everything(seed)
    model = rechub_model(schema)
    train, val, test = splits.train, splits.validation, splits.test
    loaders = DataGenerator(columns(train, schema), train.labels.numpy()).generate_dataloader(
        x_val=columns(val, schema),
        y_val=val.labels.numpy(),
        x_test=columns(test, schema),
        y_test=test.labels.numpy(),
        batch_size=1024,
    )
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = MTLTrainer(
            model,
            task_types=["classification"] * len(schema.tasks),
            optimizer_params={"lr": 1e-3, "weight_decay": 1e-4},
            n_epoch=epochs,
            earlystop_patience=epochs + 1,
            device=device,
            model_path=model_dir,
        )
        train_seconds: list[float] = []
        train_one_epoch = trainer.train_one_epoch

        def timed(loader: object) -> list[float]:
            started = time.perf_counter()
            losses = train_one_epoch(loader)
            train_seconds.append(time.perf_counter() - started)
            return losses

        trainer.train_one_epoch = timed
        started = time.perf_counter()
        trainer.fit(loaders[0], loaders[1])
        wall = time.perf_counter() - started
        scores = trainer.evaluate(trainer.model, loaders[2])
    return Run([len(train) / s for s in train_seconds], wall, [float(s) for s in scores])


def run_emm(
    module: nn.Module,
    splits: Splits,
    epochs: int,
    batch: int,
    lr: float,
    device: torch.device,
    seed: int,
) -> Run:
    config = TrainConfig(
        epochs=epochs, batch_size=batch, lr=lr, weight_decay=1e-4, patience=None, seed=seed
    )
    module = module.to(device)
    tasks = list(range(splits.train.labels.shape[1]))
    started = time.perf_counter()
    result = fit(
        module,
        TensorBatches(splits.train.to(device), batch, shuffle=True, seed=seed),
        TensorBatches(splits.validation.to(device), config.eval_batch_size_on(device)),
        tasks,
        config,
        device=device,
    )
    wall = time.perf_counter() - started
    test = evaluate(  # `fit` has restored the best epoch's weights
        module,
        TensorBatches(splits.test.to(device), config.eval_batch_size_on(device)),
        tasks,
        [f"task{t}" for t in tasks],
        device=device,
    )
    return Run(
        [h["train_samples_per_s"] for h in result.history],
        wall,
        [test[f"auc_task{t}"] for t in tasks],
    )


def rows(schema: FeatureSchema, splits: Splits, epochs: int, device: torch.device) -> list[Trainer]:
    """The compared trainers; each builds its model from the seed it is run with."""

    def emm(build: Callable[[], nn.Module], batch: int, lr: float) -> Callable[[int], Run]:
        def run(seed: int) -> Run:
            seed_everything(seed)
            return run_emm(build(), splits, epochs, batch, lr, device, seed)

        return run

    def emm_shared_bottom() -> nn.Module:
        return build_baseline(
            "shared_bottom", schema, embed_dim=EMBED_DIM, bottom=(BOTTOM,), tower=(TOWER,)
        )

    native = "native SharedBottom (same layers)"
    own = "emm-ray shared_bottom baseline (same widths)"
    return [
        Trainer(
            "torch-rechub MTLTrainer",
            "rechub SharedBottom",
            1024,
            lambda seed: run_rechub(schema, splits, epochs, device.type, seed),
        ),
        Trainer(
            "emm-ray fit",
            "rechub SharedBottom",
            1024,
            emm(lambda: RechubAdapter(rechub_model(schema), schema), 1024, 1e-3),
        ),
        Trainer("emm-ray fit", native, 1024, emm(lambda: NativeSharedBottom(schema), 1024, 1e-3)),
        Trainer("emm-ray fit", native, 2048, emm(lambda: NativeSharedBottom(schema), 2048, 2e-3)),
        Trainer("emm-ray fit", own, 1024, emm(emm_shared_bottom, 1024, 1e-3)),
        Trainer("emm-ray fit", own, 2048, emm(emm_shared_bottom, 2048, 2e-3)),
    ]


def prepared_census(data: Path | None) -> PreparedDataset:
    if data is not None:
        return PreparedDataset.load(data)
    target = Path(tempfile.gettempdir()) / "emm-bench" / "census-real"
    return prepare_dataset(DatasetConfig(name="census", source="real"), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="prepared dir (default: real census)"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3, help="runs per trainer, interleaved")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every run")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    prepared = prepared_census(args.data)
    schema = prepared.schema
    splits = Splits(*(load_split(prepared.path, s) for s in ("train", "validation", "test")))
    device = torch.device(args.device)
    trainers = rows(schema, splits, args.epochs, device)
    for seed in range(args.seeds):
        for row in trainers:
            row.runs.append(row.run(seed))
            print(f"seed {seed}: {row.model} @ {row.batch}: {row.runs[-1]}", flush=True)

    reference = trainers[0].samples_per_s
    names = schema.task_names
    lines = [
        f"# Training speed: torch-rechub vs emm-ray ({device.type})",
        "",
        f"Data: {prepared.split_info['dataset']} ({prepared.split_info['source']}), "
        f"{len(splits.train)} train / {len(splits.validation)} validation / "
        f"{len(splits.test)} test rows; {args.epochs} epochs each, "
        f"{args.seeds} seed(s) interleaved; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"load average at end {os.getloadavg()[0]:.1f} (the machine is shared: absolute "
        "numbers are noisy, the runs are side by side).",
        "",
        "| trainer | model | batch | train samples/s | speed-up | wall s (with eval) | "
        + " | ".join(f"test AUC {n}" for n in names)
        + " |",
        "| --- | --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for r in trainers:
        lines.append(
            f"| {r.trainer} | {r.model} | {r.batch} | {r.samples_per_s:,.0f} | "
            f"{r.samples_per_s / reference:.1f}x | {np.mean([x.wall_s for x in r.runs]):.1f} | "
            + " | ".join(r.auc_cell(t) for t in range(len(names)))
            + " |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    output = args.output or RESULTS / f"training_speed_{device.type}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)


if __name__ == "__main__":
    main()
