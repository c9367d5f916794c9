"""AKF: differentiable top-k fusion gate, Transformer-block merge, exact reference variant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emm_ray.fusion import EMMModel, FusionConfig
from emm_ray.fusion.akf import MultiTaskMerge, ReferenceMerge, ReferenceTaskFusion, TaskFusion
from tests.fusion.planted import planted_batch, planted_schema, untrained_pool

MEMBER = {"embed_dim": 4, "hidden": (16, 8)}


def three_task_model(**config: object) -> tuple[EMMModel, torch.Tensor]:
    schema = planted_schema(3)
    specs = [("mlp", f"task{t}", MEMBER) for t in (0, 0, 1, 2, 2)]
    model = EMMModel(
        schema, untrained_pool(schema, specs), FusionConfig(d_model=8, heads=2, **config)
    )
    batch = planted_batch(schema, 64, seed=0)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    for _ in range(2):  # the zero-initialised tower output passes gradient from step 2 on
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(batch.sparse, batch.dense), batch.labels)
        loss.backward()
        optimizer.step()
    return model, loss


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_gradients_reach_every_fusion_gate(top_k: int) -> None:
    model, _ = three_task_model(top_k=top_k)
    gates = [f for level in model.stack.fusion for f in level]
    assert len(gates) == 2 * 3 and all(isinstance(g, TaskFusion) for g in gates)
    for gate in gates:
        assert gate.fusion_gate.top_k == min(top_k, len(gate.candidate_index))
        gradient = gate.fusion_gate.scores.weight.grad
        assert gradient is not None and gradient.abs().sum() > 0
        if len(gate.own_index) > 1:
            assert gate.task_gate.scores.weight.grad.abs().sum() > 0


def test_reference_fusion_gate_is_a_hard_argmax_that_never_trains() -> None:
    model, _ = three_task_model(variant="reference", embedding="fresh", component_input="fused")
    for level in model.stack.fusion:
        for gate in level:
            assert isinstance(gate, ReferenceTaskFusion)
            assert gate.fusion_scores.weight.grad is None
            assert gate.merge.query.weight.grad.abs().sum() > 0
    schema = planted_schema(3)
    batch = planted_batch(schema, 16, seed=0)
    _, records = model.run(batch.sparse, batch.dense)
    fusion = [r for r in records if r.gate == "fusion"]
    assert len(fusion) == 2 * 3
    for record in fusion:
        assert record.task not in record.candidates and len(record.candidates) == 2
        assert torch.equal(record.selected.sum(1), torch.ones(16, dtype=torch.long))
        chosen = record.weights.argmax(1)
        assert torch.equal(record.selected.float().argmax(1), chosen)


def test_top_k_selection_keeps_exactly_k_candidates_per_row() -> None:
    model, _ = three_task_model(top_k=2)
    batch = planted_batch(planted_schema(3), 16, seed=1)
    _, records = model.run(batch.sparse, batch.dense)
    for record in (r for r in records if r.gate == "fusion"):
        assert torch.equal(record.selected.sum(1), torch.full((16,), 2))
        assert torch.all(record.weights[~record.selected] == 0)
        assert torch.all((record.weights.sum(1) > 0) & (record.weights.sum(1) <= 1 + 1e-6))


def test_multitask_merge_is_the_own_row_of_a_standard_transformer_encoder_layer() -> None:
    torch.manual_seed(0)
    merge = MultiTaskMerge(d_model=8, heads=2, ffn_multiplier=2, dropout=0.0)
    layer = nn.TransformerEncoderLayer(
        8, 2, dim_feedforward=16, dropout=0.0, activation="gelu", batch_first=True
    ).eval()
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(
            torch.cat([merge.query.weight, merge.key.weight, merge.value.weight])
        )
        layer.self_attn.in_proj_bias.copy_(
            torch.cat([merge.query.bias, merge.key.bias, merge.value.bias])
        )
        layer.self_attn.out_proj.load_state_dict(merge.out.state_dict())
        layer.linear1.load_state_dict(merge.feed_forward[0].state_dict())
        layer.linear2.load_state_dict(merge.feed_forward[3].state_dict())
        layer.norm1.load_state_dict(merge.attention_norm.state_dict())
        layer.norm2.load_state_dict(merge.feed_forward_norm.state_dict())
    own, others = torch.randn(5, 8), torch.randn(5, 3, 8)
    expected = layer(torch.cat([own.unsqueeze(1), others], 1))[:, 0]
    actual, attention = merge(own, others)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention.sum(1), torch.ones(5))


def test_fusion_gate_priors_steer_attention() -> None:
    torch.manual_seed(0)
    merge = MultiTaskMerge(d_model=8, heads=2, ffn_multiplier=2, dropout=0.0)
    own, others = torch.randn(4, 8), torch.randn(4, 2, 8)
    _, attention = merge(own, others, torch.tensor([[0.0, -1e4]] * 4))
    assert torch.all(attention[:, 2] < 1e-6)
    assert torch.all(attention[:, 1] > 1e-3)


def test_reference_merge_matches_its_formula() -> None:
    torch.manual_seed(0)
    merge = ReferenceMerge(8)
    tokens = torch.randn(6, 2, 8)
    q, k, v = merge.query(tokens), merge.key(tokens), merge.value(tokens)
    weights = torch.softmax((q * k).sum(-1) / math.sqrt(8), dim=1)
    expected = weights[:, 0:1] * v[:, 0] + weights[:, 1:2] * v[:, 1]
    actual, reported = merge(tokens)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(reported, weights)
    assert not any(isinstance(m, nn.LayerNorm) for m in merge.modules())
