"""Each architecture learns, handles the OOV bucket, and survives a state_dict round trip."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch.nn import functional

from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import DataError
from emm_ray.models import ARCHITECTURES, FieldEmbedding, build_model

pytestmark = pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))

Inputs = tuple[torch.Tensor, torch.Tensor]


def planted_labels(sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """A rule the models can learn: colour 'red', shape 'star' and age push the label."""
    logit = 2.0 * (sparse[:, 0] == 1) - 2.0 * (sparse[:, 1] == 3) + 1.5 * dense[:, 0]
    return (logit > 0).float()


def test_a_few_steps_learn_a_planted_signal(
    architecture: str, tiny_schema: FeatureSchema, tiny_inputs: Inputs
) -> None:
    torch.manual_seed(0)
    model = build_model(architecture, tiny_schema, "click")
    labels = planted_labels(*tiny_inputs)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        return functional.binary_cross_entropy_with_logits(model(*tiny_inputs), labels)

    before = loss().item()
    for _ in range(40):
        optimiser.zero_grad()
        loss().backward()
        optimiser.step()
    after = loss().item()
    assert after < 0.5 * before, f"{architecture}: loss {before:.3f} -> {after:.3f}"


def test_out_of_vocabulary_index_zero_embeds_and_trains(
    architecture: str, tiny_schema: FeatureSchema
) -> None:
    model = build_model(architecture, tiny_schema, "click")
    sparse = torch.zeros(4, len(tiny_schema.sparse), dtype=torch.long)
    dense = torch.zeros(4, len(tiny_schema.dense))
    model.check_inputs(sparse, dense)
    logits = model(sparse, dense)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    logits.sum().backward()
    table = next(m for m in model.embedding.modules() if isinstance(m, FieldEmbedding))
    assert table.weight.grad[table.offsets].abs().sum(dim=1).gt(0).all(), (
        "every field's OOV row (index 0) must receive gradient"
    )


def test_check_inputs_names_the_field_and_row_of_a_bad_index(
    architecture: str, tiny_schema: FeatureSchema, tiny_inputs: Inputs
) -> None:
    model = build_model(architecture, tiny_schema, "click")
    sparse, dense = tiny_inputs[0].clone(), tiny_inputs[1].clone()
    model.check_inputs(sparse, dense)
    sparse[5, 2] = tiny_schema.cardinalities[2]
    with pytest.raises(DataError, match=r"row 6, column 'size': index 5 outside \[0, 5\)"):
        model.check_inputs(sparse, dense)
    dense[1, 1] = float("nan")
    with pytest.raises(DataError, match="column 'income'"):
        model.check_inputs(tiny_inputs[0], dense)
    with pytest.raises(DataError, match="int64"):
        model.check_inputs(tiny_inputs[0].int(), tiny_inputs[1])


def test_state_dict_round_trip_into_a_fresh_build(
    architecture: str, tiny_schema: FeatureSchema, tiny_inputs: Inputs
) -> None:
    torch.manual_seed(0)
    model = build_model(architecture, tiny_schema, "buy", embed_dim=4)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    hparams = json.loads(json.dumps(model.hparams))
    torch.manual_seed(1)
    fresh = build_model(architecture, tiny_schema, "buy", **hparams)
    assert not torch.equal(fresh.eval()(*tiny_inputs), model.eval()(*tiny_inputs))
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.hparams == model.hparams
    assert torch.equal(fresh.eval()(*tiny_inputs), model.eval()(*tiny_inputs))
