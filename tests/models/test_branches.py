"""Per-architecture facts about carried branches: what passes through which block unchanged."""

from __future__ import annotations

import torch

from emm_ray.data.schema import FeatureSchema
from emm_ray.models import build_model
from tests.models.test_decomposition import states

Inputs = tuple[torch.Tensor, torch.Tensor]


def test_wide_and_fm_columns_pass_through_every_block(
    tiny_schema: FeatureSchema, tiny_inputs: Inputs
) -> None:
    for architecture, carry in (("wide_deep", 1), ("deepfm", 3 + 1)):
        parts = build_model(architecture, tiny_schema, "click", embed_dim=3).eval().decompose()
        flat = states(parts, *tiny_inputs)
        assert all(b.in_carry == b.out_carry == carry for b in parts.blocks)
        for before, after in zip(flat, flat[1:], strict=False):
            assert torch.equal(before[:, -carry:], after[:, -carry:])


def test_deepfm_tower_adds_fm_and_first_order_terms(
    tiny_schema: FeatureSchema, tiny_inputs: Inputs
) -> None:
    model = build_model("deepfm", tiny_schema, "click", embed_dim=4).eval()
    parts = model.decompose()
    with torch.no_grad():
        fields = parts.embedding.fields(*tiny_inputs)
        pairwise = sum(
            (fields[:, i] * fields[:, j]).sum(dim=1)
            for i in range(fields.shape[1])
            for j in range(i + 1, fields.shape[1])
        )
        final = states(parts, *tiny_inputs)[-1]
        fm = final[:, -5:-1].sum(dim=1)
        torch.testing.assert_close(fm, pairwise, rtol=1e-5, atol=1e-7)
        first_order = parts.embedding.first_order(*tiny_inputs).squeeze(1)
        deep = parts.tower.linear(final[:, :-5]).squeeze(1)
        torch.testing.assert_close(model(*tiny_inputs), deep + fm + first_order)


def test_dcn_v2_carries_x0_and_advances_the_cross_state(
    tiny_schema: FeatureSchema, tiny_inputs: Inputs
) -> None:
    parts = build_model("dcn_v2", tiny_schema, "click", hidden=(8, 6, 4)).eval().decompose()
    flat = states(parts, *tiny_inputs)
    x0 = flat[0]
    width = x0.shape[1]
    assert [b.out_carry for b in parts.blocks] == [2 * width, 2 * width, width]
    with torch.no_grad():
        x = x0
        for block, state in zip(parts.blocks, flat[1:], strict=True):
            x = block.cross(x0, x)
            main = block.out_main
            torch.testing.assert_close(state[:, main : main + width], x)
            if not block.last:
                assert torch.equal(state[:, main + width :], x0)


def test_xdeepfm_keeps_first_order_and_pools_each_cin_layer(
    tiny_schema: FeatureSchema, tiny_inputs: Inputs
) -> None:
    cin = (5, 3)  # layer 2 has fewer maps than fields: the other contraction order
    model = build_model("xdeepfm", tiny_schema, "click", hidden=(8, 6), cin=cin, embed_dim=3)
    parts = model.eval().decompose()
    flat = states(parts, *tiny_inputs)
    first_order = parts.embedding.first_order(*tiny_inputs)
    for state in flat:
        assert torch.equal(state[:, -1:], first_order)
    final = flat[-1]
    assert final.shape[1] == 6 + sum(cin) + 1
    with torch.no_grad():
        fields = parts.embedding.fields(*tiny_inputs)
        x0 = fields.transpose(1, 2)
        x, pooled = x0, []
        for block in parts.blocks:
            outer = x.unsqueeze(-1) * x0.unsqueeze(-2)
            x = torch.einsum("ohf,behf->beo", block.cin.weight, outer) + block.cin.bias
            pooled.append(x.sum(dim=1))
        torch.testing.assert_close(final[:, 6:-1], torch.cat(pooled, dim=1))
