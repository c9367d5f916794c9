"""Training speed: torch-rechub's `MTLTrainer` vs emm-ray's loop, same model size and data.

The model is torch-rechub's census Shared-Bottom (its `examples/ranking/run_census.py`):
every field embedded in 4 dims, a shared `[117]` bottom and one `[8]` tower per task,
each MLP layer `Linear -> BatchNorm -> ReLU`. Runs, side by side in one process on the
same encoded census splits (validation carved from the training file):

1. torch-rechub: `DataGenerator` (a per-row `Dataset` + `DataLoader`) and `MTLTrainer`,
   batch 1024, lr 1e-3, weight decay 1e-4 — its census example's settings;
2. emm-ray's loop training *the same torch-rechub model object* (a thin adapter feeds
   it column views): isolates what the loop and the tensor data path change;
3. emm-ray's loop with an emm-native module of identical layer sizes (one embedding
   gather for all fields) at batch 1024 and at emm's default batch 2048.

Throughput counts training steps only: the median over epochs of rows / time inside the
epoch's training pass (the median damps other processes' load on a shared machine);
wall time includes each trainer's validation passes. AUCs are on the validation split
after the same number of epochs.

    pip install -e .[bench]          # torch-rechub
    python benchmarks/training_speed.py --epochs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # torch-rechub's progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from emm_ray.data.batch import Batch  # noqa: E402
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset  # noqa: E402
from emm_ray.data.schema import FeatureSchema  # noqa: E402
from emm_ray.data.streaming import load_split  # noqa: E402
from emm_ray.models.base import FieldEmbedding  # noqa: E402
from emm_ray.train.loop import TensorBatches, TrainConfig, fit, seed_everything  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EMBED_DIM, BOTTOM, TOWER = 4, 117, 8


@dataclass
class Row:
    trainer: str
    model: str
    batch: int
    samples_per_s: float
    wall_s: float
    aucs: list[float]


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


def run_rechub(schema: FeatureSchema, train: Batch, val: Batch, epochs: int, device: str) -> Row:
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    seed_everything(0)
    model = rechub_model(schema)
    loaders = DataGenerator(columns(train, schema), train.labels.numpy()).generate_dataloader(
        x_val=columns(val, schema),
        y_val=val.labels.numpy(),
        x_test=columns(val, schema),
        y_test=val.labels.numpy(),
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
        scores = trainer.evaluate(trainer.model, loaders[1])
    return Row(
        "torch-rechub MTLTrainer",
        "rechub SharedBottom",
        1024,
        float(np.median([len(train) / s for s in train_seconds])),
        wall,
        [float(s) for s in scores],
    )


def run_emm(
    module: nn.Module,
    name: str,
    train: Batch,
    val: Batch,
    epochs: int,
    batch: int,
    lr: float,
    device: torch.device,
) -> Row:
    config = TrainConfig(epochs=epochs, batch_size=batch, lr=lr, weight_decay=1e-4, patience=None)
    module = module.to(device)
    tasks = list(range(train.labels.shape[1]))
    started = time.perf_counter()
    result = fit(
        module,
        TensorBatches(train.to(device), batch, shuffle=True, seed=0),
        TensorBatches(val.to(device), config.eval_batch_size),
        tasks,
        config,
        device=device,
    )
    wall = time.perf_counter() - started
    final = result.history[-1]
    throughput = float(np.median([h["train_samples_per_s"] for h in result.history]))
    aucs = [final[f"val_auc_task{t}"] for t in tasks]
    return Row("emm-ray fit", name, batch, throughput, wall, aucs)


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
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every run")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    prepared = prepared_census(args.data)
    schema = prepared.schema
    train, val = load_split(prepared.path, "train"), load_split(prepared.path, "validation")
    device = torch.device(args.device)
    rows = [run_rechub(schema, train, val, args.epochs, args.device)]
    print(rows[-1], flush=True)
    seed_everything(0)
    rows.append(
        run_emm(
            RechubAdapter(rechub_model(schema), schema),
            "rechub SharedBottom",
            train,
            val,
            args.epochs,
            1024,
            1e-3,
            device,
        )
    )
    print(rows[-1], flush=True)
    for batch, lr in ((1024, 1e-3), (2048, 2e-3)):
        seed_everything(0)
        rows.append(
            run_emm(
                NativeSharedBottom(schema),
                "native SharedBottom (same sizes)",
                train,
                val,
                args.epochs,
                batch,
                lr,
                device,
            )
        )
        print(rows[-1], flush=True)

    reference = rows[0].samples_per_s
    names = schema.task_names
    lines = [
        f"# Training speed: torch-rechub vs emm-ray ({device.type})",
        "",
        f"Data: {prepared.split_info['dataset']} ({prepared.split_info['source']}), "
        f"{len(train)} train / {len(val)} validation rows; {args.epochs} epochs each; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, load average at end "
        f"{os.getloadavg()[0]:.1f} (the machine is shared: absolute numbers are noisy, "
        "the runs are side by side).",
        "",
        "| trainer | model | batch | train samples/s | speed-up | wall s (with eval) | "
        + " | ".join(f"val AUC {n}" for n in names)
        + " |",
        "| --- | --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for r in rows:
        lines.append(
            f"| {r.trainer} | {r.model} | {r.batch} | {r.samples_per_s:,.0f} | "
            f"{r.samples_per_s / reference:.1f}x | {r.wall_s:.1f} | "
            + " | ".join(f"{a:.4f}" for a in r.aucs)
            + " |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    output = args.output or RESULTS / f"training_speed_{device.type}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)


if __name__ == "__main__":
    main()
