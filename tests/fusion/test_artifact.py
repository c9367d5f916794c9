"""The fused model as one artifact: members' manifests inside, exact round trip, verified."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emm_ray.errors import ArtifactIntegrityError
from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.fusion.artifact import load_fused_model, save_fused_model
from emm_ray.models import build_model
from tests.fusion.planted import planted_batch, planted_schema, untrained_pool

MEMBER = {"embed_dim": 4, "hidden": (16, 8)}


@pytest.mark.parametrize("variant", ["emm", "reference"])
def test_saved_fused_model_reloads_exactly_with_plug_in_steps(variant: str, tmp_path: Path) -> None:
    schema = planted_schema(3)
    pool = untrained_pool(schema, [("mlp", "task0", MEMBER), ("deepfm", "task1", MEMBER)])
    pool[0] = PoolMember(pool[0].name, pool[0].model, {"run_id": "abc"})
    model = EMMModel(schema, pool, FusionConfig(variant=variant, d_model=8, heads=2))
    model.add_members([PoolMember("late", build_model("dcn_v2", schema, "task2", **MEMBER))])
    with torch.no_grad():
        for scale in model.plugin_scales():
            scale.fill_(0.5)
    batch = planted_batch(schema, 40, seed=0)
    expected = model.eval()(batch.sparse, batch.dense)

    manifest = save_fused_model(model, tmp_path / "fused", "census-emm", metrics={"val_auc": 0.9})
    assert manifest.kind == "fused" and manifest.architecture == "emm"
    assert [c.name for c in manifest.components] == ["mlp-task0-0", "deepfm-task1-1", "late"]
    assert manifest.components[0].extra == {"run_id": "abc"}
    assert manifest.components[2].architecture == "dcn_v2"
    assert manifest.hparams["steps"] == [["mlp-task0-0", "deepfm-task1-1"], ["late"]]
    assert manifest.tasks == ("task0", "task1", "task2")

    loaded, loaded_manifest = load_fused_model(tmp_path / "fused", expected_schema=schema)
    assert loaded_manifest.model_dump(mode="json") == manifest.model_dump(mode="json")
    assert torch.equal(loaded(batch.sparse, batch.dense), expected)


def test_tampered_fused_weights_are_refused(tmp_path: Path) -> None:
    schema = planted_schema(2)
    pool = untrained_pool(schema, [("mlp", "task0", MEMBER), ("mlp", "task1", MEMBER)])
    model = EMMModel(schema, pool, FusionConfig(d_model=8, heads=2))
    save_fused_model(model, tmp_path, "m")
    state = torch.load(tmp_path / "state_dict.pt", weights_only=True)
    key = next(k for k in state if k.startswith("stack.towers"))
    state[key] = state[key] + 1
    torch.save(state, tmp_path / "state_dict.pt")
    with pytest.raises(ArtifactIntegrityError, match="checksum"):
        load_fused_model(tmp_path)
