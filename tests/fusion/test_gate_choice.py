"""Pools where the gates must choose: one candidate carries the signal, the others are noise.

Three tasks; task0's label needs task1's table (planted: `mixing[0, 1] > 0`, through the
magnitude of task1's table, so the pool-wide stacking of the members' logits cannot take
it) and nothing of task2's. Every member saw only its own task's fields, so for task0 the
task1 member is the one useful candidate and the two task2 members are noise. With the
shipped fusion config (`configs/fusion/emm.yaml`: pool residual, stacked ensemble over the
whole pool) and `top_k: 1` of 3 candidates, the fusion gate must pick the task1 member on
>= 90 % of rows, and the gain must come from that member: with it untrained (the control)
the gain is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from emm_ray.config import load_yaml_config
from emm_ray.data.batch import Batch
from emm_ray.evaluation.gates import summarize_gates
from emm_ray.evaluation.metrics import score_module
from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.train.loop import TensorBatches, seed_everything
from tests.fusion.planted import (
    SMALL_MLP,
    planted_batch,
    planted_schema,
    quick_config,
    train_module,
    trained_pool,
    untrained_pool,
)

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "fusion" / "emm.yaml"
MIXING = np.array([[2.5, 3.0, 0.0], [0.0, 2.5, 0.0], [0.0, 0.0, 2.5]])


@dataclass
class ThreeTasks:
    train: Batch
    validation: Batch
    test: Batch
    pool: list[PoolMember]


@pytest.fixture(scope="module")
def three_tasks() -> ThreeTasks:
    schema = planted_schema(3)
    train, validation, test = (
        planted_batch(schema, rows, seed, mixing=MIXING, signal="magnitude")
        for rows, seed in ((10000, 1), (3000, 2), (20000, 3))
    )
    specs = [("mlp", task, SMALL_MLP) for task in ("task0", "task1", "task2", "task2")]
    return ThreeTasks(train, validation, test, trained_pool(schema, train, validation, specs))


def fuse(data: ThreeTasks, pool: list[PoolMember]) -> tuple[EMMModel, float]:
    """Fused model (shipped config, top_k 1) and its task0 test-AUC gain over the ensemble."""
    config = load_yaml_config(SHIPPED, FusionConfig).model_copy(update={"top_k": 1})
    schema = planted_schema(3)
    seed_everything(0)
    model = EMMModel(schema, pool, config)
    train_module(
        model,
        data.train,
        data.validation,
        model.task_indices,
        quick_config(lr=2e-3, batch_size=512, epochs=30, patience=6, validate_initial=True),
    )
    start = EMMModel(schema, pool, config.model_copy(update={"correction": "none"}))
    start.calibrate(TensorBatches(data.validation, 1000).batches(0))
    scores = [
        {r.task: r.auc for r in score_module("m", "fused", m, data.test, [0, 1, 2], m.task_names)}
        for m in (model, start)
    ]
    return model, scores[0]["task0"] - scores[1]["task0"]


def test_the_fusion_gate_picks_the_one_useful_candidate(three_tasks: ThreeTasks) -> None:
    model, gain = fuse(three_tasks, three_tasks.pool)
    assert gain > 0.03, gain
    useful = three_tasks.pool[1].name
    rows = summarize_gates(model, TensorBatches(three_tasks.test, 4096).batches(0))
    last = model.num_levels - 1
    fusion = {
        r.candidate: r for r in rows if (r.level, r.task, r.gate) == (last, "task0", "fusion")
    }
    assert set(fusion) == {m.name for m in three_tasks.pool[1:]}
    assert fusion[useful].selection_rate >= 0.9, fusion
    attention = {
        r.candidate: r.mean_weight
        for r in rows
        if (r.level, r.task, r.gate) == (last, "task0", "attention")
    }
    noise = [m.name for m in three_tasks.pool[2:]]
    assert attention[useful] > 5 * max(attention[n] for n in noise), attention


def test_without_the_useful_member_trained_the_gain_is_gone(three_tasks: ThreeTasks) -> None:
    stand_in = untrained_pool(planted_schema(3), [("mlp", "task1", SMALL_MLP)])[0]
    control = [three_tasks.pool[0], stand_in, *three_tasks.pool[2:]]
    _, gain = fuse(three_tasks, control)
    assert gain < 0.01, gain
