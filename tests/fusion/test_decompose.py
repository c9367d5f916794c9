"""Decomposer: level grouping, exact reproduction of every member, clear errors."""

from __future__ import annotations

import pytest
import torch

from emm_ray.data.schema import Task
from emm_ray.errors import ConfigError, SchemaMismatchError
from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.fusion.decompose import AlignedMember, derive_levels, group_sizes
from emm_ray.models import ARCHITECTURES, build_model
from tests.fusion.planted import planted_batch, planted_schema, untrained_pool

TINY = {
    "mlp": {"embed_dim": 4, "hidden": (16, 8, 8)},
    "wide_deep": {"embed_dim": 4, "hidden": (16, 8)},
    "deepfm": {"embed_dim": 4, "hidden": (16, 8, 8, 8)},
    "dcn_v2": {"embed_dim": 4, "hidden": (16, 8), "cross_rank": 4},
    "autoint": {"embed_dim": 4, "attention_layers": 2, "attention_dim": 8},
    "xdeepfm": {"embed_dim": 4, "hidden": (16, 8), "cin": (4, 4)},
}


def test_group_sizes_split_consecutive_blocks_evenly() -> None:
    assert group_sizes(5, 2) == [3, 2]
    assert group_sizes(3, 3) == [1, 1, 1]
    assert group_sizes(7, 3) == [3, 2, 2]
    with pytest.raises(ConfigError, match="cannot split 2 blocks into 3 levels"):
        group_sizes(2, 3)


def test_every_architecture_is_covered_by_the_tiny_specs() -> None:
    assert set(TINY) == set(ARCHITECTURES)


@pytest.mark.parametrize("architecture", sorted(TINY))
@pytest.mark.parametrize("levels", [1, 2])
def test_aligned_components_reproduce_the_member_exactly(architecture: str, levels: int) -> None:
    schema = planted_schema(2)
    batch = planted_batch(schema, 64, seed=0)
    torch.manual_seed(0)
    model = build_model(architecture, schema, "task0", **TINY[architecture]).eval()
    aligned = AlignedMember(
        PoolMember("m", model), levels, d_model=8, component_input="residual", fresh_width=None
    )
    assert len(aligned.components) == levels
    state = aligned.embed(batch.sparse, batch.dense)
    for level in range(levels):
        state, token = aligned.run_level(
            level, aligned.component_input(level, state, None if level == 0 else torch.randn(64, 8))
        )
        assert token.shape == (64, 8)
    assert torch.equal(model.tower(state), model(batch.sparse, batch.dense))


def test_residual_adapters_start_at_zero_so_members_run_as_trained() -> None:
    schema = planted_schema(2)
    pool = untrained_pool(
        schema, [("mlp", "task0", TINY["mlp"]), ("deepfm", "task1", TINY["deepfm"])]
    )
    model = EMMModel(schema, pool, FusionConfig(d_model=8, heads=2, levels=3))
    for member in model.members:
        for level in range(1, model.num_levels):
            previous = torch.randn(5, member.components[level].in_width)
            fused = torch.randn(5, 8)
            assert torch.equal(member.component_input(level, previous, fused), previous)


def test_levels_default_to_the_shallowest_member_and_errors_name_it() -> None:
    schema = planted_schema(2)
    pool = untrained_pool(
        schema, [("mlp", "task0", TINY["mlp"]), ("wide_deep", "task1", TINY["wide_deep"])]
    )
    assert derive_levels(pool, None) == 2
    with pytest.raises(
        ConfigError, match=r"member 'wide_deep-task1-1' \(wide_deep\) has only 2 blocks"
    ):
        derive_levels(pool, 3)


def test_members_of_another_schema_or_with_duplicate_names_are_refused() -> None:
    schema = planted_schema(2)
    other = schema.model_copy(update={"tasks": (*schema.tasks, Task(name="extra"))})
    good = PoolMember("a", build_model("mlp", schema, "task0", **TINY["mlp"]))
    foreign = PoolMember("b", build_model("mlp", other, "task1", **TINY["mlp"]))
    with pytest.raises(SchemaMismatchError, match="pool member 'b' was trained on schema"):
        EMMModel(schema, [good, foreign], FusionConfig())
    with pytest.raises(ConfigError, match=r"unique, repeated: \['a'\]"):
        EMMModel(schema, [good, good], FusionConfig())
