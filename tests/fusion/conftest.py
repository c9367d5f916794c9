"""Planted-signal data, a trained pool and a fused model, shared by the fusion tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from emm_ray.checksum import parameter_checksum
from emm_ray.data.batch import Batch
from emm_ray.data.schema import FeatureSchema
from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.train.loop import seed_everything
from tests.fusion.planted import (
    SMALL_MLP,
    planted_batch,
    planted_schema,
    quick_config,
    train_module,
    trained_pool,
)


@dataclass
class Planted:
    schema: FeatureSchema
    train: Batch
    validation: Batch
    test: Batch


@dataclass
class FusedRun:
    pool: list[PoolMember]
    model: EMMModel
    pool_checksums_before: dict[str, str]
    trainable_before: dict[str, object]


@pytest.fixture(scope="session")
def planted() -> Planted:
    schema = planted_schema(2)
    return Planted(
        schema,
        planted_batch(schema, 5000, seed=1),
        planted_batch(schema, 3000, seed=2),
        planted_batch(schema, 20000, seed=3),
    )


@pytest.fixture(scope="session")
def planted_pool(planted: Planted) -> list[PoolMember]:
    specs = [("mlp", "task0", SMALL_MLP), ("mlp", "task1", SMALL_MLP)]
    return trained_pool(planted.schema, planted.train, planted.validation, specs)


@pytest.fixture(scope="session")
def fused_planted(planted: Planted, planted_pool: list[PoolMember]) -> FusedRun:
    """The `emm` variant fused over the planted pool, with checksums taken before training."""
    seed_everything(0)
    model = EMMModel(
        planted.schema, planted_pool, FusionConfig(d_model=16, heads=2, top_k=1, tower_hidden=(16,))
    )
    before = {m.name: parameter_checksum(m.model.state_dict()) for m in planted_pool}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_module(
        model,
        planted.train,
        planted.validation,
        model.task_indices,
        quick_config(lr=5e-3, batch_size=512, epochs=20),
    )
    return FusedRun(planted_pool, model, before, trainable)
