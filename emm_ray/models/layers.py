"""Building pieces shared by the zoo: input encoders, deep layers, towers, hyperparameters.

Everything here works on whole batches with single tensor ops (one embedding gather for
all fields, no Python loop over fields or rows), which is what keeps CPU training fast.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from emm_ray.models.base import Component, FieldEmbedding, ModelEmbedding, ModelHyperparameters

PositiveInt = Annotated[int, Field(ge=1)]


class DeepHyperparameters(ModelHyperparameters):
    """Hyperparameters of every architecture with an embedding and a deep (MLP) path."""

    embed_dim: PositiveInt = 16
    hidden: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (256, 128, 64)
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    layer_norm: bool = False


class ConcatEmbedding(ModelEmbedding):
    """`[B, S * E + D]`: flattened sparse-field embeddings followed by the raw dense values."""

    def __init__(self, cardinalities: list[int], num_dense: int, dim: int) -> None:
        super().__init__(len(cardinalities) * dim + num_dense)
        self.fields = FieldEmbedding(cardinalities, dim)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.fields(sparse).flatten(1), dense], dim=1)


class FieldStack(nn.Module):
    """`(sparse [B, S], dense [B, D]) -> [B, S + D, E]`: every feature as one field vector.

    A dense field `j` is embedded as `value_j * v_j` (the FM / AutoInt convention), so
    interaction layers see sparse and dense fields alike.
    """

    def __init__(self, cardinalities: list[int], num_dense: int, dim: int) -> None:
        super().__init__()
        self.sparse = FieldEmbedding(cardinalities, dim)
        self.dense = nn.Parameter(torch.empty(num_dense, dim))
        nn.init.normal_(self.dense, std=0.01)
        self.num_fields = len(cardinalities) + num_dense

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.sparse(sparse), dense.unsqueeze(-1) * self.dense], dim=1)


class FirstOrder(nn.Module):
    """The linear (wide) term: one weight per category plus a linear map of dense, `[B, 1]`."""

    def __init__(self, cardinalities: list[int], num_dense: int) -> None:
        super().__init__()
        self.sparse = FieldEmbedding(cardinalities, 1)
        self.dense = nn.Linear(num_dense, 1)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.sparse(sparse).sum(dim=1) + self.dense(dense)


def deep_layer(in_dim: int, out_dim: int, dropout: float, layer_norm: bool) -> nn.Sequential:
    """Linear -> [LayerNorm] -> ReLU -> [Dropout].

    No BatchNorm: its running statistics drift when a frozen component sees fused inputs.
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    if layer_norm:
        layers.append(nn.LayerNorm(out_dim))
    layers.append(nn.ReLU())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DeepBlock(Component):
    """One deep layer on the main columns; carried branch columns pass through unchanged."""

    def __init__(
        self, in_main: int, out_main: int, carry: int, dropout: float, layer_norm: bool
    ) -> None:
        super().__init__(in_main + carry, out_main + carry, in_carry=carry, out_carry=carry)
        self.layer = deep_layer(in_main, out_main, dropout, layer_norm)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if not self.in_carry:
            return self.layer(state)
        main, carry = state.split([self.in_main, self.in_carry], dim=1)
        return torch.cat([self.layer(main), carry], dim=1)


def deep_blocks(in_main: int, config: DeepHyperparameters, carry: int = 0) -> list[DeepBlock]:
    """One `DeepBlock` per entry of `config.hidden`, each carrying `carry` branch columns."""
    widths = [in_main, *config.hidden]
    return [
        DeepBlock(widths[i], widths[i + 1], carry, config.dropout, config.layer_norm)
        for i in range(len(config.hidden))
    ]


class LinearTower(Component):
    """Logit = a linear map of the whole final state (main and carried columns alike)."""

    def __init__(self, in_width: int, in_carry: int = 0) -> None:
        super().__init__(in_width, 1, in_carry=in_carry)
        self.linear = nn.Linear(in_width, 1)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.linear(state).squeeze(-1)


class SumTower(Component):
    """Logit = linear(main) + sum of the carried columns, which are already logit terms.

    This is how Wide&Deep adds its wide logit and DeepFM its FM and first-order terms.
    """

    def __init__(self, in_main: int, in_carry: int) -> None:
        super().__init__(in_main + in_carry, 1, in_carry=in_carry)
        self.linear = nn.Linear(in_main, 1)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        main, carry = state.split([self.in_main, self.in_carry], dim=1)
        return self.linear(main).squeeze(-1) + carry.sum(dim=1)
