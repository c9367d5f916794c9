"""What the fuse stage ships to Ray Train workers, and its guard on frozen weights (no Ray)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ArtifactIntegrityError
from emm_ray.fusion import FusionConfig
from emm_ray.fusion.artifact import fused_manifest
from emm_ray.fusion.stage import FusedModelFactory, MemberWeights, verify_frozen
from emm_ray.tracking.artifacts import ArtifactManifest
from tests.fusion.planted import planted_batch, planted_schema, untrained_pool

MEMBER = {"embed_dim": 4, "hidden": (16, 8)}


def weights(
    schema: FeatureSchema, specs: list[tuple[str, str, dict[str, Any]]]
) -> tuple[MemberWeights, ...]:
    return tuple(
        MemberWeights.from_manifest(
            ArtifactManifest.model_validate(m.description()), m.model.state_dict()
        )
        for m in untrained_pool(schema, specs)
    )


def test_factory_builds_the_fused_model_and_the_guard_catches_changed_members() -> None:
    schema = planted_schema(2)
    members = weights(schema, [("mlp", "task0", MEMBER), ("deepfm", "task1", MEMBER)])
    factory = FusedModelFactory(members, FusionConfig(d_model=8, heads=2))
    model = factory(schema)
    assert model.member_names == ["mlp-task0-0", "deepfm-task1-1"]
    verify_frozen(model, factory, schema)
    with torch.no_grad():
        next(model.members[1].tower.parameters()).add_(1e-3)
    with pytest.raises(ArtifactIntegrityError, match="'deepfm-task1-1' changed during fusion"):
        verify_frozen(model, factory, schema)


def test_plug_factory_rebuilds_the_base_and_the_guard_covers_its_weights() -> None:
    schema = planted_schema(3)
    base_members = weights(schema, [("mlp", "task0", MEMBER), ("mlp", "task1", MEMBER)])
    base = FusedModelFactory(base_members, FusionConfig(d_model=8, heads=2))(schema)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    (newcomer,) = weights(schema, [("dcn_v2", "task2", {**MEMBER, "cross_rank": 2})])
    newcomer = MemberWeights(
        "dcn-new",
        newcomer.architecture,
        newcomer.task,
        newcomer.hparams,
        newcomer.state_dict,
        {**newcomer.manifest, "name": "dcn-new"},
    )
    factory = FusedModelFactory(
        (newcomer,),
        base.config,
        fused_manifest(base, "base").model_dump(mode="json"),
        state,
    )
    model = factory(schema)
    assert model.steps == [["mlp-task0-0", "mlp-task1-1"], ["dcn-new"]]
    batch = planted_batch(schema, 16, seed=0)
    assert torch.equal(model(batch.sparse, batch.dense)[:, :2], base(batch.sparse, batch.dense))
    verify_frozen(model, factory, schema)
    with torch.no_grad():
        model.stack.towers[0].mlp[0].weight.add_(1.0)
    with pytest.raises(ArtifactIntegrityError, match="changed 1 parameters of the base"):
        verify_frozen(model, factory, schema)


def test_a_pool_residual_fusion_is_validated_before_training_unless_the_config_says_not() -> None:
    from emm_ray.fusion.stage import FuseSpec

    residual = {"fusion": {"prediction": "pool_residual"}}
    assert FuseSpec.model_validate(residual).fit_config.validate_initial
    assert not FuseSpec.model_validate(
        {"fusion": {"prediction": "tower"}}
    ).fit_config.validate_initial
    opted_out = {**residual, "train": {"validate_initial": False, "lr": 3e-4}}
    config = FuseSpec.model_validate(opted_out).fit_config
    assert not config.validate_initial and config.lr == 3e-4
