"""Frozen components: no gradients, eval mode whatever the parent's mode, checksum unchanged."""

from __future__ import annotations

import torch

from emm_ray.checksum import parameter_checksum
from emm_ray.fusion import EMMModel, FusionConfig
from emm_ray.fusion.frozen import Frozen
from tests.fusion.conftest import FusedRun
from tests.fusion.planted import planted_batch, planted_schema, untrained_pool


def test_fusion_training_leaves_every_pool_member_bit_identical(fused_planted: FusedRun) -> None:
    after = {m.name: parameter_checksum(m.model.state_dict()) for m in fused_planted.pool}
    assert after == fused_planted.pool_checksums_before
    changed = [
        name
        for name, parameter in fused_planted.model.named_parameters()
        if parameter.requires_grad
        and not torch.equal(parameter, fused_planted.trainable_before[name])
    ]
    assert changed, "fusion training changed no trainable parameter at all"


def test_only_fusion_parameters_are_trainable(fused_planted: FusedRun) -> None:
    model = fused_planted.model
    for member in model.members:
        frozen = [*member.embedding.parameters(), *member.components.parameters()]
        assert frozen and not any(p.requires_grad for p in frozen)
    adapters = [p for m in model.members for p in m.output_adapters.parameters()]
    assert adapters and all(p.requires_grad for p in adapters)
    assert all(p.requires_grad for p in model.stack.fusion.parameters())
    assert all(p.requires_grad for p in model.stack.towers.parameters())


def test_frozen_parts_stay_in_eval_mode_when_the_model_trains() -> None:
    schema = planted_schema(2)
    noisy = {"embed_dim": 4, "hidden": (16, 8), "dropout": 0.5}
    pool = untrained_pool(schema, [("mlp", "task0", noisy), ("mlp", "task1", noisy)])
    model = EMMModel(schema, pool, FusionConfig(d_model=8, heads=2)).train()
    frozen = [m for m in model.modules() if isinstance(m, Frozen)]
    assert frozen and not any(m.training or any(c.training for c in m.modules()) for m in frozen)
    assert model.stack.towers.training
    frozen[0].train()
    assert not frozen[0].training
    batch = planted_batch(schema, 32, seed=0)
    assert torch.equal(model(batch.sparse, batch.dense), model(batch.sparse, batch.dense))


def test_the_frozen_check_sees_a_changed_buffer_as_well_as_a_changed_weight() -> None:
    schema = planted_schema(2)
    pool = untrained_pool(schema, [("mlp", "task0", {"embed_dim": 4, "hidden": (8, 8)})])
    member = pool[0].model
    member.blocks[0].register_buffer("running_stat", torch.zeros(3))  # as a norm layer keeps
    trained = parameter_checksum(member.state_dict())
    model = EMMModel(schema, pool, FusionConfig(d_model=8, heads=2))
    (aligned,) = model.members
    assert parameter_checksum(aligned.frozen_state()) == trained
    aligned.components[0].module[0].running_stat.add_(1.0)
    assert parameter_checksum(aligned.frozen_state()) != trained
    aligned.components[0].module[0].running_stat.sub_(1.0)
    next(aligned.tower.parameters()).data.mul_(2.0)
    assert parameter_checksum(aligned.frozen_state()) != trained
