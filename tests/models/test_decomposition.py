"""The decomposition contract: parts compose to the model exactly, widths are as declared."""

from __future__ import annotations

import pytest
import torch

from emm_ray.data.schema import FeatureSchema
from emm_ray.models import ARCHITECTURES, Decomposition, build_model

pytestmark = pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))


def compose(parts: Decomposition, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """What a fusion layer does with one model's parts: embedding, each block, tower."""
    state = parts.embedding(sparse, dense)
    for block in parts.blocks:
        state = block(state)
    return parts.tower(state)


def states(parts: Decomposition, sparse: torch.Tensor, dense: torch.Tensor) -> list[torch.Tensor]:
    """The flat state after the embedding and after every block."""
    out = [parts.embedding(sparse, dense)]
    for block in parts.blocks:
        out.append(block(out[-1]))
    return out


def test_parts_reproduce_the_model_bit_for_bit(
    architecture: str, tiny_schema: FeatureSchema, tiny_inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    torch.manual_seed(1)
    model = build_model(architecture, tiny_schema, "click").eval()
    parts = model.decompose()
    with torch.no_grad():
        expected = model(*tiny_inputs)
        assert torch.equal(compose(parts, *tiny_inputs), expected)
    assert torch.equal(compose(parts, *tiny_inputs), model(*tiny_inputs))
    assert parts.architecture == architecture and parts.task == "click"


def test_parts_reproduce_the_model_in_training_mode_with_dropout(
    architecture: str, tiny_schema: FeatureSchema, tiny_inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model = build_model(architecture, tiny_schema, "click", dropout=0.3).train()
    torch.manual_seed(2)
    expected = model(*tiny_inputs)
    torch.manual_seed(2)
    assert torch.equal(compose(model.decompose(), *tiny_inputs), expected)


def test_parts_are_the_models_own_modules(architecture: str, tiny_schema: FeatureSchema) -> None:
    model = build_model(architecture, tiny_schema, "buy")
    parts = model.decompose()
    own = {id(p) for p in model.parameters()}
    pieces = [parts.embedding, *parts.blocks, parts.tower]
    assert {id(p) for piece in pieces for p in piece.parameters()} == own
    assert len(parts.blocks) >= 2, "the default config must give the fusion >= 2 levels"


def test_declared_widths_match_actual_shapes(
    architecture: str, tiny_schema: FeatureSchema, tiny_inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    parts = build_model(architecture, tiny_schema, "click").decompose()
    rows = tiny_inputs[0].shape[0]
    flat = states(parts, *tiny_inputs)
    assert flat[0].shape == (rows, parts.embedding.out_width)
    assert parts.embedding.out_carry == parts.blocks[0].in_carry
    for block, before, after in zip(parts.blocks, flat[:-1], flat[1:], strict=True):
        assert before.shape == (rows, block.in_width)
        assert after.shape == (rows, block.out_width)
        assert 0 <= block.out_carry <= block.out_width
    assert (parts.tower.in_width, parts.tower.in_carry) == (
        parts.blocks[-1].out_width,
        parts.blocks[-1].out_carry,
    )
    assert parts.tower(flat[-1]).shape == (rows,)


def test_carried_branches_reach_the_tower(
    architecture: str, tiny_schema: FeatureSchema, tiny_inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """A parallel branch is represented, not dropped: its columns change the logit."""
    torch.manual_seed(3)
    parts = build_model(architecture, tiny_schema, "click").eval().decompose()
    carry = parts.tower.in_carry
    if carry == 0:
        assert all(b.out_carry == 0 for b in parts.blocks) and parts.embedding.out_carry == 0
        return
    with torch.no_grad():
        final = states(parts, *tiny_inputs)[-1]
        nudged = final.clone()
        nudged[:, -carry:] += 1.0
        assert not torch.allclose(parts.tower(nudged), parts.tower(final))


def depth_hparams(architecture: str, depth: int) -> dict:
    """Hyperparameters giving `architecture` exactly `depth` blocks, with LayerNorm on."""
    if architecture == "autoint":
        return {"attention_layers": depth, "layer_norm": True}
    hparams = {"hidden": (8,) * depth, "layer_norm": True}
    if architecture == "xdeepfm":
        hparams["cin"] = (4,) * depth
    return hparams


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_other_depths_compose_exactly(
    architecture: str,
    depth: int,
    tiny_schema: FeatureSchema,
    tiny_inputs: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model = build_model(architecture, tiny_schema, "buy", **depth_hparams(architecture, depth))
    parts = model.eval().decompose()
    assert len(parts.blocks) == depth
    with torch.no_grad():
        flat = states(parts, *tiny_inputs)
        assert [s.shape[1] for s in flat[1:]] == [b.out_width for b in parts.blocks]
        assert torch.equal(parts.tower(flat[-1]), model(*tiny_inputs))
