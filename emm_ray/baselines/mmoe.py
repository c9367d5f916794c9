"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task, a tower per task."""

from __future__ import annotations

import torch
from torch import nn

from emm_ray.baselines.common import (
    BaselineHyperparameters,
    Head,
    MultiTaskBaseline,
    PositiveInt,
    Widths,
    mlp,
)


class MMoEHyperparameters(BaselineHyperparameters):
    experts: PositiveInt = 8
    expert_hidden: Widths = (128, 64)
    tower: tuple[int, ...] = (64,)


class MMoE(MultiTaskBaseline):
    name = "mmoe"
    Hyperparameters = MMoEHyperparameters

    def build(self, config: MMoEHyperparameters) -> None:
        width = self.input.out_width
        self.experts = nn.ModuleList(
            mlp(width, config.expert_hidden, config.dropout) for _ in range(config.experts)
        )
        self.gates = nn.ModuleList(nn.Linear(width, config.experts) for _ in self.task_names)
        self.towers = nn.ModuleList(
            Head(config.expert_hidden[-1], config.tower, config.dropout) for _ in self.task_names
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        inputs = self.input(sparse, dense)
        experts = torch.stack([expert(inputs) for expert in self.experts], dim=1)
        logits = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            weights = torch.softmax(gate(inputs), dim=-1)
            logits.append(tower(torch.einsum("be,bed->bd", weights, experts)))
        return torch.stack(logits, dim=1)
