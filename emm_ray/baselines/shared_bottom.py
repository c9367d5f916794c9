"""Shared-Bottom (Caruana 1997): one MLP bottom for all tasks, a tower per task."""

from __future__ import annotations

import torch
from torch import nn

from emm_ray.baselines.common import BaselineHyperparameters, Head, MultiTaskBaseline, Widths, mlp


class SharedBottomHyperparameters(BaselineHyperparameters):
    bottom: Widths = (256, 128)
    tower: tuple[int, ...] = (64,)


class SharedBottom(MultiTaskBaseline):
    name = "shared_bottom"
    Hyperparameters = SharedBottomHyperparameters

    def build(self, config: SharedBottomHyperparameters) -> None:
        self.bottom = mlp(self.input.out_width, config.bottom, config.dropout)
        self.towers = nn.ModuleList(
            Head(config.bottom[-1], config.tower, config.dropout) for _ in self.task_names
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        shared = self.bottom(self.input(sparse, dense))
        return torch.stack([tower(shared) for tower in self.towers], dim=1)
