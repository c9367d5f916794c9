"""Tiny data with planted cross-task signal, and small pools, for fusion/baseline tests.

Each task t owns an interaction table over a pair of its own sparse fields. Task t's
logit is `strong * own_table + weak * sum(other tasks' tables)`: a single-task model of
task t learns its own table well, but the other tables only through a weak, noisy
signal, while the other tasks' models learn those tables well. So the knowledge a task
misses is sitting, already learned, in the other members' components: fusion can find
it, a single-task model cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emm_ray.data.batch import Batch
from emm_ray.data.schema import DenseField, FeatureSchema, SparseField, Task
from emm_ray.fusion.decompose import PoolMember
from emm_ray.models import build_model
from emm_ray.train.loop import TensorBatches, TrainConfig, fit, seed_everything

CATEGORIES = 10
STRONG, WEAK = 2.5, 1.5


def planted_schema(num_tasks: int = 2) -> FeatureSchema:
    """Two sparse fields per task (CATEGORIES values each), one noise field, two dense."""
    vocabulary = tuple(str(i) for i in range(CATEGORIES))
    sparse = [SparseField(name=f"s{i}", vocabulary=vocabulary) for i in range(2 * num_tasks + 1)]
    dense = [DenseField(name="d0"), DenseField(name="d1")]
    tasks = [Task(name=f"task{t}") for t in range(num_tasks)]
    return FeatureSchema(dataset="planted", sparse=tuple(sparse), dense=tuple(dense), tasks=tuple(tasks))


def planted_batch(schema: FeatureSchema, rows: int, seed: int, table_seed: int = 7) -> Batch:
    """Encoded rows: sparse indices 1..CATEGORIES (0 = OOV unused), standard-normal dense."""
    tables = np.random.default_rng(table_seed).normal(size=(len(schema.tasks), CATEGORIES, CATEGORIES))
    rng = np.random.default_rng(seed)
    sparse = rng.integers(0, CATEGORIES, size=(rows, len(schema.sparse)))
    dense = rng.normal(size=(rows, len(schema.dense))).astype(np.float32)
    signal = np.stack(
        [tables[t][sparse[:, 2 * t], sparse[:, 2 * t + 1]] for t in range(len(schema.tasks))], 1
    )
    total = signal.sum(1, keepdims=True)
    logits = STRONG * signal + WEAK * (total - signal)
    labels = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return Batch(
        sparse=torch.from_numpy(sparse + 1),
        dense=torch.from_numpy(dense),
        labels=torch.from_numpy(labels),
    )


def quick_config(**overrides: Any) -> TrainConfig:
    values = {"epochs": 30, "batch_size": 256, "lr": 1e-2, "patience": 4, "seed": 0}
    return TrainConfig(**{**values, **overrides})


def train_module(
    module: torch.nn.Module,
    train: Batch,
    validation: Batch,
    task_indices: Sequence[int],
    config: TrainConfig | None = None,
) -> None:
    config = config or quick_config()
    fit(
        module,
        TensorBatches(train, config.batch_size, shuffle=True, seed=config.seed),
        TensorBatches(validation, 4096),
        task_indices,
        config,
    )


def trained_pool(
    schema: FeatureSchema,
    train: Batch,
    validation: Batch,
    specs: Sequence[tuple[str, str, dict[str, Any]]],
) -> list[PoolMember]:
    """Train `(architecture, task, hparams)` members on their own task's labels."""
    members = []
    for index, (architecture, task, hparams) in enumerate(specs):
        seed_everything(index)
        model = build_model(architecture, schema, task, **hparams)
        train_module(model, train, validation, [schema.task_index(task)])
        members.append(PoolMember(f"{architecture}-{task}-{index}", model, {"index": index}))
    return members


def untrained_pool(
    schema: FeatureSchema, specs: Sequence[tuple[str, str, dict[str, Any]]]
) -> list[PoolMember]:
    members = []
    for index, (architecture, task, hparams) in enumerate(specs):
        seed_everything(index)
        model = build_model(architecture, schema, task, **hparams)
        members.append(PoolMember(f"{architecture}-{task}-{index}", model))
    return members


SMALL_MLP = {"embed_dim": 8, "hidden": (64, 32)}
