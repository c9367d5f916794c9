"""`ignore_fields`: a member that must not use some inputs is blind to them everywhere."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError
from emm_ray.models import ARCHITECTURES, build_model
from emm_ray.train.pool_spec import MemberSpec

BLIND = ("shape", "income")  # one sparse, one dense field of the tiny schema


def _scramble(sparse: torch.Tensor, dense: torch.Tensor, schema: FeatureSchema):
    """The same rows with the blind fields replaced by other values."""
    sparse, dense = sparse.clone(), dense.clone()
    column = schema.sparse_names.index("shape")
    sparse[:, column] = (sparse[:, column] + 1) % schema.cardinalities[column]
    dense[:, schema.dense_names.index("income")] += 3.0
    return sparse, dense


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_a_blind_model_and_its_parts_ignore_the_fields(
    architecture: str, tiny_schema: FeatureSchema, tiny_inputs
) -> None:
    torch.manual_seed(0)
    model = build_model(architecture, tiny_schema, "click", ignore_fields=BLIND).eval()
    seeing = build_model(architecture, tiny_schema, "click").eval()
    scrambled = _scramble(*tiny_inputs, tiny_schema)
    with torch.no_grad():
        assert torch.equal(model(*tiny_inputs), model(*scrambled))
        parts = model.decompose()  # what fusion runs: the embedding carries the blindness
        assert torch.equal(parts.embedding(*tiny_inputs), parts.embedding(*scrambled))
        assert not torch.equal(seeing(*tiny_inputs), seeing(*scrambled))
    assert model.state_dict().keys() == seeing.state_dict().keys()


def test_rebuilt_from_its_hparams_and_pickled_it_stays_blind(
    tiny_schema: FeatureSchema, tiny_inputs
) -> None:
    model = build_model("deepfm", tiny_schema, "click", ignore_fields=BLIND).eval()
    assert model.hparams["ignore_fields"] == BLIND
    rebuilt = build_model("deepfm", tiny_schema, "click", **model.hparams).eval()
    rebuilt.load_state_dict(model.state_dict())
    shipped = pickle.loads(pickle.dumps(copy.deepcopy(model)))  # as Ray moves modules
    scrambled = _scramble(*tiny_inputs, tiny_schema)
    with torch.no_grad():
        for other in (rebuilt, shipped):
            assert torch.equal(other(*scrambled), model(*tiny_inputs))
    assert "ignore_fields" not in build_model("deepfm", tiny_schema, "click").hparams


def test_unknown_fields_are_refused_by_name(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(ConfigError, match=r"ignore_fields names unknown fields \['colour_x'\]"):
        build_model("mlp", tiny_schema, "click", ignore_fields=["colour_x"])
    spec = MemberSpec(name="m", architecture="mlp", task="click", hparams={"ignore_fields": BLIND})
    assert spec.full_hparams()["ignore_fields"] == list(BLIND)
    assert (
        "ignore_fields" not in MemberSpec(name="m", architecture="mlp", task="click").full_hparams()
    )
