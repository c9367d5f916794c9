"""The EMM model: any number of tasks and members, every architecture, every option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emm_ray.fusion import EMMModel, FusionConfig
from tests.fusion.planted import planted_batch, planted_schema, untrained_pool
from tests.fusion.test_decompose import TINY


@pytest.mark.parametrize("variant", ["emm", "reference"])
@pytest.mark.parametrize("embedding", ["pool", "fresh"])
@pytest.mark.parametrize("component_input", ["residual", "fused"])
def test_three_tasks_with_a_heterogeneous_pool(
    variant: str, embedding: str, component_input: str
) -> None:
    schema = planted_schema(3)
    architectures = sorted(TINY)
    specs = [(a, f"task{i % 3}", TINY[a]) for i, a in enumerate(architectures)]
    config = FusionConfig(
        variant=variant,
        embedding=embedding,
        component_input=component_input,
        d_model=8,
        heads=2,
        top_k=2,
        fresh_embedding_dim=4,
        prediction="tower",  # gradients reach every part from the first step
    )
    model = EMMModel(schema, untrained_pool(schema, specs), config)
    assert model.num_levels == 2
    assert model.task_names == ["task0", "task1", "task2"] and model.task_indices == [0, 1, 2]
    batch = planted_batch(schema, 32, seed=0)
    logits = model(batch.sparse, batch.dense)
    assert logits.shape == (32, 3) and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    assert all(p.grad is not None for p in model.stack.towers.parameters())
    if embedding == "fresh":
        assert all(p.grad.abs().sum() > 0 for p in model.stack.fresh_embedding.parameters())
    else:
        assert model.stack.fresh_embedding is None


def test_pool_covering_some_tasks_predicts_those_in_schema_order() -> None:
    schema = planted_schema(3)
    pool = untrained_pool(schema, [("mlp", "task2", TINY["mlp"]), ("mlp", "task0", TINY["mlp"])])
    model = EMMModel(schema, pool, FusionConfig(d_model=8, heads=2))
    assert model.task_names == ["task0", "task2"] and model.task_indices == [0, 2]
    batch = planted_batch(schema, 8, seed=0)
    assert model(batch.sparse, batch.dense).shape == (8, 2)


def test_task_gate_weights_are_a_distribution_over_own_components() -> None:
    schema = planted_schema(2)
    specs = [
        ("mlp", "task0", TINY["mlp"]),
        ("deepfm", "task0", TINY["deepfm"]),
        ("dcn_v2", "task1", TINY["dcn_v2"]),
    ]
    model = EMMModel(schema, untrained_pool(schema, specs), FusionConfig(d_model=8, heads=2))
    batch = planted_batch(schema, 16, seed=0)
    _, records = model.run(batch.sparse, batch.dense)
    task_gates = [r for r in records if r.gate == "task"]
    assert {(r.level, r.task) for r in task_gates} == {
        (0, "task0"),
        (0, "task1"),
        (1, "task0"),
        (1, "task1"),
    }
    for record in task_gates:
        torch.testing.assert_close(record.weights.sum(1), torch.ones(16))
    assert [r.candidates for r in task_gates if r.task == "task0"][0] == [
        "mlp-task0-0",
        "deepfm-task0-1",
    ]


def test_untrained_pool_residual_model_predicts_the_pool_ensemble_exactly() -> None:
    schema = planted_schema(2)
    specs = [
        ("mlp", "task0", TINY["mlp"]),
        ("deepfm", "task0", TINY["deepfm"]),
        ("dcn_v2", "task1", TINY["dcn_v2"]),
    ]
    pool = untrained_pool(schema, specs)
    batch = planted_batch(schema, 16, seed=0)
    ensemble = torch.stack(
        [
            (pool[0].model(batch.sparse, batch.dense) + pool[1].model(batch.sparse, batch.dense))
            / 2,
            pool[2].model(batch.sparse, batch.dense),
        ],
        dim=1,
    )
    for embedding in ("pool", "fresh"):
        model = EMMModel(
            schema,
            pool,
            FusionConfig(d_model=8, heads=2, embedding=embedding, prediction="pool_residual"),
        )
        torch.testing.assert_close(model(batch.sparse, batch.dense), ensemble)
    tower_only = EMMModel(schema, pool, FusionConfig(d_model=8, heads=2, prediction="tower"))
    assert not torch.allclose(tower_only(batch.sparse, batch.dense), ensemble)
