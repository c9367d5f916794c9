"""Heads that turn a state into one task's logit (or logit correction).

`Tower` is the AKF stack's prediction head on a task's final fused state. `MLPCorrection`
is the control the AKF stack is measured against: per task, a plain MLP on the
concatenated last hidden states of the task's own founding members, with no gates and
no cross-task path. Both start at exactly zero when they correct the pool's ensemble
(`zero_output`), so training can only move the prediction away from the ensemble where
that lowers the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Tower(nn.Module):
    """An MLP from a `[B, in_width]` state to one logit per row."""

    def __init__(self, in_width: int, hidden: Sequence[int], zero_output: bool) -> None:
        super().__init__()
        widths = [in_width, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        output = nn.Linear(widths[-1], 1)
        if zero_output:
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        self.mlp = nn.Sequential(*layers, output)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.mlp(state).squeeze(-1)


class MLPCorrection(nn.Module):
    """Per task, a `Tower` over its own members' last hidden states (concatenated)."""

    def __init__(self, hidden: Sequence[int], zero_output: bool) -> None:
        super().__init__()
        self.hidden = tuple(hidden)
        self.zero_output = zero_output
        self.heads = nn.ModuleList()

    def add_task(self, in_width: int) -> None:
        self.heads.append(Tower(in_width, self.hidden, self.zero_output))

    def forward(self, member_states: list[torch.Tensor]) -> torch.Tensor:
        """`[B, T]` from, per task, `[B, width_t]` of its members' states side by side."""
        return torch.stack(
            [head(state) for head, state in zip(self.heads, member_states, strict=True)], dim=1
        )
