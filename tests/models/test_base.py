"""The base class enforces the contract on any new architecture, before it reaches fusion."""

from __future__ import annotations

import pytest
import torch

from emm_ray.config import StrictModel
from emm_ray.data.schema import FeatureSchema
from emm_ray.models import Component, DecomposableModel, FieldEmbedding, ModelEmbedding
from emm_ray.models.base import ModelHyperparameters
from emm_ray.models.layers import LinearTower


class _NoHyperparameters(ModelHyperparameters):
    pass


class _Pooled(ModelEmbedding):
    def __init__(self, cardinalities: list[int]) -> None:
        super().__init__(out_width=4)
        self.fields = FieldEmbedding(cardinalities, 4)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.fields(sparse).sum(dim=1)


class _Identity(Component):
    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return state


class _Miswired(DecomposableModel):
    """Declares a block input of width 5 after an embedding of width 4."""

    architecture = "miswired"
    Hyperparameters = _NoHyperparameters

    def build(self, schema: FeatureSchema, config: StrictModel):
        return _Pooled(schema.cardinalities), [_Identity(5, 5)], LinearTower(5)


class _CarryMismatch(DecomposableModel):
    """Right widths, but the block claims a carried column the embedding doesn't give."""

    architecture = "carry_mismatch"
    Hyperparameters = _NoHyperparameters

    def build(self, schema: FeatureSchema, config: StrictModel):
        return _Pooled(schema.cardinalities), [_Identity(4, 4, 1, 1)], LinearTower(4, 1)


def test_widths_that_do_not_chain_are_rejected(tiny_schema: FeatureSchema) -> None:
    with pytest.raises(
        ValueError, match=r"block 0 expects \(width, carry\) \(5, 0\) but embedding gives \(4, 0\)"
    ):
        _Miswired(tiny_schema, "click")
    with pytest.raises(ValueError, match=r"block 0 expects \(width, carry\) \(4, 1\)"):
        _CarryMismatch(tiny_schema, "click")


def test_carry_cannot_exceed_the_state() -> None:
    with pytest.raises(ValueError, match="carry widths"):
        _Identity(3, 3, in_carry=4)


@pytest.mark.parametrize("dim", [1, 4, 5, 16])
def test_field_embedding_gradient_equals_nn_embedding(dim: int) -> None:
    """Both backward paths (column-wise for narrow tables, 2-D above) sum repeated rows."""
    cardinalities = [3, 7, 2]
    fields = FieldEmbedding(cardinalities, dim)
    reference = torch.nn.Embedding(sum(cardinalities), dim)
    reference.weight.data.copy_(fields.weight.data)
    sparse = torch.stack([torch.randint(0, c, (64,)) for c in cardinalities], dim=1)
    upstream = torch.randn(64, len(cardinalities), dim)

    (fields(sparse) * upstream).sum().backward()
    (reference(sparse + fields.offsets) * upstream).sum().backward()

    torch.testing.assert_close(fields.weight.grad, reference.weight.grad)
