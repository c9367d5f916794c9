"""Tiny data with planted cross-task signal, and small pools, for fusion/baseline tests.

Each task t owns an interaction table over a pair of sparse fields (its "own" fields).
Task t's logit is `STRONG * own_table + WEAK * sum(other tasks' tables)`, so every task
needs every table. With `signal="magnitude"`, the other tables enter through their
magnitude instead (`WEAK * (|other_table| - E|other_table|)`), a non-monotone function
of the other members' outputs: no weighted sum of the members' logits reaches that part,
only a model that reads their states can. Each pool member is trained as a team with
only its own task's fields logged would train it: the other tasks' fields are
out-of-vocabulary in its training rows (`own_fields_only`). A single-task model thus sees only
part of its task's signal, while the other tasks' members have learned the rest; only a
model that combines the members (fusion) can reach the full signal. Oracle test AUCs:
about 0.83 with the own table only, 0.90 with all tables.
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
from emm_ray.train.loop import FitResult, TensorBatches, TrainConfig, fit, seed_everything

CATEGORIES = 10
STRONG, WEAK = 2.5, 1.5


def planted_schema(num_tasks: int = 2) -> FeatureSchema:
    """Two sparse fields per task (CATEGORIES values each), one noise field, two dense."""
    vocabulary = tuple(str(i) for i in range(CATEGORIES))
    sparse = [SparseField(name=f"s{i}", vocabulary=vocabulary) for i in range(2 * num_tasks + 1)]
    dense = [DenseField(name="d0"), DenseField(name="d1")]
    tasks = [Task(name=f"task{t}") for t in range(num_tasks)]
    return FeatureSchema(
        dataset="planted", sparse=tuple(sparse), dense=tuple(dense), tasks=tuple(tasks)
    )


def planted_batch(
    schema: FeatureSchema,
    rows: int,
    seed: int,
    table_seed: int = 7,
    mixing: np.ndarray | None = None,
    signal: str = "additive",
) -> Batch:
    """Encoded rows: sparse indices 1..CATEGORIES (0 = OOV unused), standard-normal dense.

    `mixing[t, s]` is how strongly task s's table enters task t's logit (default: STRONG
    on the diagonal, WEAK elsewhere). With `signal="magnitude"`, an off-diagonal table
    enters through its centred magnitude.
    """
    if signal not in ("additive", "magnitude"):
        raise ValueError(f"signal must be 'additive' or 'magnitude', got {signal!r}")
    tables = np.random.default_rng(table_seed).normal(
        size=(len(schema.tasks), CATEGORIES, CATEGORIES)
    )
    rng = np.random.default_rng(seed)
    sparse = rng.integers(0, CATEGORIES, size=(rows, len(schema.sparse)))
    dense = rng.normal(size=(rows, len(schema.dense))).astype(np.float32)
    table_values = np.stack(
        [tables[t][sparse[:, 2 * t], sparse[:, 2 * t + 1]] for t in range(len(schema.tasks))], 1
    )
    tasks = len(schema.tasks)
    if mixing is None:
        mixing = np.full((tasks, tasks), WEAK) + (STRONG - WEAK) * np.eye(tasks)
    mixing = np.asarray(mixing)
    if signal == "additive":
        logits = table_values @ mixing.T
    else:
        cross = mixing * (1 - np.eye(tasks))
        magnitude = np.abs(table_values) - np.sqrt(2 / np.pi)  # centred: E|N(0, 1)|
        logits = table_values * np.diag(mixing) + magnitude @ cross.T
    labels = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return Batch(
        sparse=torch.from_numpy(sparse + 1),
        dense=torch.from_numpy(dense),
        labels=torch.from_numpy(labels),
    )


def own_fields_only(schema: FeatureSchema, batch: Batch, task: str) -> Batch:
    """`batch` with every other task's pair of fields set to the OOV index 0."""
    own = schema.task_index(task)
    sparse = batch.sparse.clone()
    for other in range(len(schema.tasks)):
        if other != own:
            sparse[:, 2 * other : 2 * other + 2] = 0
    return Batch(sparse, batch.dense, batch.labels)


def quick_config(**overrides: Any) -> TrainConfig:
    values = {
        "epochs": 30,
        "batch_size": 256,
        "lr": 1e-2,
        "patience": 4,
        "seed": 0,
        "num_threads": 1,
    }
    return TrainConfig(**{**values, **overrides})


def train_module(
    module: torch.nn.Module,
    train: Batch,
    validation: Batch,
    task_indices: Sequence[int],
    config: TrainConfig | None = None,
) -> FitResult:
    config = config or quick_config()
    return fit(
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
    """Train `(architecture, task, hparams)` members on their task's labels and fields."""
    members = []
    for index, (architecture, task, hparams) in enumerate(specs):
        seed_everything(index)
        model = build_model(architecture, schema, task, **hparams)
        train_module(
            model,
            own_fields_only(schema, train, task),
            own_fields_only(schema, validation, task),
            [schema.task_index(task)],
        )
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
