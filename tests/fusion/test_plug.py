"""Plug-and-play: new members join a fused model; old tasks change only through new parts."""

from __future__ import annotations

import pytest
import torch

from emm_ray.errors import ConfigError
from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.fusion.plug import PlugIn
from emm_ray.models import build_model
from emm_ray.train.loop import seed_everything
from tests.fusion.planted import (
    planted_batch,
    planted_schema,
    quick_config,
    train_module,
    untrained_pool,
)

MEMBER = {"embed_dim": 4, "hidden": (16, 8)}


def old_state(model: EMMModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", ["emm", "reference"])
@pytest.mark.parametrize("new_task", ["task2", "task0"])
def test_added_member_trains_only_new_parts(variant: str, new_task: str) -> None:
    schema = planted_schema(3)
    train, validation = planted_batch(schema, 2000, seed=1), planted_batch(schema, 1000, seed=2)
    pool = untrained_pool(schema, [("mlp", "task0", MEMBER), ("deepfm", "task1", MEMBER)])
    model = EMMModel(schema, pool, FusionConfig(variant=variant, d_model=8, heads=2))
    config = quick_config(epochs=2, batch_size=500, patience=None)
    train_module(model, train, validation, model.task_indices, config)
    model.eval()
    before_state = old_state(model)
    before_logits = model(validation.sparse, validation.dense)

    seed_everything(5)
    (newcomer,) = untrained_pool(schema, [("dcn_v2", new_task, {**MEMBER, "cross_rank": 2})])
    model.add_members([newcomer])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not trainable & set(before_state)
    assert torch.equal(model(validation.sparse, validation.dense)[:, :2], before_logits)

    train_module(model, train, validation, model.task_indices, config)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before_state.items())
    scales = model.plugin_scales()
    assert len(scales) == model.num_levels * 2 and any(s.abs().sum() > 0 for s in scales)
    model.eval()
    with torch.no_grad():
        moved = model(validation.sparse, validation.dense)[:, :2]
        for scale in scales:
            scale.zero_()
        restored = model(validation.sparse, validation.dense)[:, :2]
    assert not torch.equal(moved, before_logits)
    assert torch.equal(restored, before_logits)
    expected_tasks = ["task0", "task1", "task2"] if new_task == "task2" else ["task0", "task1"]
    assert model.task_names == expected_tasks
    assert model.steps == [[m.name for m in pool], [newcomer.name]]


def test_a_second_plug_step_freezes_the_first_steps_plug_ins() -> None:
    schema = planted_schema(3)
    pool = untrained_pool(schema, [("mlp", "task0", MEMBER), ("mlp", "task1", MEMBER)])
    model = EMMModel(schema, pool, FusionConfig(d_model=8, heads=2))
    model.add_members([PoolMember("first", build_model("mlp", schema, "task2", **MEMBER))])
    first = [p for p in model.stack.plugins.modules() if isinstance(p, PlugIn)]
    assert len(first) == model.num_levels * 2
    assert all(p.requires_grad for plugin in first for p in plugin.parameters())
    model.add_members([PoolMember("second", build_model("wide_deep", schema, "task0", **MEMBER))])
    assert not any(p.requires_grad for plugin in first for p in plugin.parameters())
    plugins = [p for p in model.stack.plugins.modules() if isinstance(p, PlugIn)]
    assert len(plugins) == model.num_levels * (2 + 3)
    added = [plugin for plugin in plugins if all(plugin is not old for old in first)]
    assert all(p.requires_grad for plugin in added for p in plugin.parameters())


def test_adding_a_member_twice_or_an_empty_step_is_refused() -> None:
    schema = planted_schema(2)
    pool = untrained_pool(schema, [("mlp", "task0", MEMBER), ("mlp", "task1", MEMBER)])
    model = EMMModel(schema, pool, FusionConfig(d_model=8, heads=2))
    with pytest.raises(ConfigError, match="already has members named"):
        model.add_members([pool[0]])
    with pytest.raises(ConfigError, match="at least one new member"):
        model.add_members([])
