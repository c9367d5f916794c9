"""AITM (Xi et al., KDD 2021): sequential tasks, information transferred from step t-1 to t.

Each task has its own tower over the shared embedding giving `q_t`. For t >= 1 an
information-transfer MLP maps the previous task's fused state `z_{t-1}` to `p_{t-1}`,
and the attention unit (per-token `q.k`, softmax over the two tokens, sum of values)
fuses `[p_{t-1}; q_t]` into `z_t`. With `funnel` (the paper's form, the default) the
loss adds the behavioural calibrator: a later step (purchase) should not be predicted
more likely than the earlier one (click), `weight * mean(relu(p_t - p_{t-1}))` per step
(mean over rows rather than the paper's sum, so the weight does not depend on the batch
size).

The calibrator is wrong when later tasks' positives are not subsets of earlier ones'
(census: income vs never_married). `funnel: false` is the form reference
implementations run on such task mixes: the information transfer stays, the loss is
plain mean BCE (`calibration_weight` is then unused).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from emm_ray.baselines.common import BaselineHyperparameters, MultiTaskBaseline, Widths, mlp


class AITMHyperparameters(BaselineHyperparameters):
    tower: Widths = (256, 128, 64)
    calibration_weight: float = Field(0.6, ge=0.0)
    funnel: bool = True


class AttentionUnit(nn.Module):
    """AIT: each token scores its own query-key product; softmax over tokens; sum of values."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scores = (self.query(tokens) * self.key(tokens)).sum(-1) / math.sqrt(tokens.shape[-1])
        return torch.einsum("bn,bnd->bd", torch.softmax(scores, dim=1), self.value(tokens))


class AITM(MultiTaskBaseline):
    name = "aitm"
    Hyperparameters = AITMHyperparameters
    min_tasks = 2

    def build(self, config: AITMHyperparameters) -> None:
        tasks, width = len(self.task_names), config.tower[-1]
        self.towers = nn.ModuleList(
            mlp(self.input.out_width, config.tower, config.dropout) for _ in range(tasks)
        )
        self.transfers = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(tasks - 1)
        )
        self.attention = nn.ModuleList(AttentionUnit(width) for _ in range(tasks - 1))
        self.logits = nn.ModuleList(nn.Linear(width, 1) for _ in range(tasks))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        inputs = self.input(sparse, dense)
        state = self.towers[0](inputs)
        states = [state]
        for tower, transfer, attention in zip(
            self.towers[1:], self.transfers, self.attention, strict=True
        ):
            state = attention(torch.stack([transfer(state), tower(inputs)], dim=1))
            states.append(state)
        return torch.cat([head(s) for head, s in zip(self.logits, states, strict=True)], dim=1)

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean BCE over tasks, plus the calibration penalty with `funnel` (the loop's hook)."""
        bce = F.binary_cross_entropy_with_logits(logits, labels)
        if not self.config.funnel:
            return bce
        probabilities = torch.sigmoid(logits)
        calibration = F.relu(probabilities[:, 1:] - probabilities[:, :-1]).mean(0).sum()
        return bce + self.config.calibration_weight * calibration
