"""Plug-and-play: what a newly added member contributes to tasks that already exist.

When members join a fused model, every existing part is frozen and each existing task
gets, per level, one `PlugIn` over the new members' tokens. Its output enters the task's
fused state through a zero-initialised per-channel scale, so right after joining (and
whenever that scale is zeroed) the old tasks predict exactly as before; they can change
only through these new parameters. The scale's gradient is non-zero from the first step
(it is the new tokens' projection), so the new path starts learning at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PlugIn(nn.Module):
    """Gated, zero-initialised update of one existing task's fused state from new members."""

    def __init__(
        self, task: int, context_width: int, candidates: Sequence[int], d_model: int
    ) -> None:
        super().__init__()
        self.task = task
        self.register_buffer(
            "candidate_index", torch.tensor(list(candidates), dtype=torch.long), persistent=False
        )
        self.gate = nn.Linear(context_width, len(candidates))
        self.project = nn.Linear(d_model, d_model)
        self.scale = nn.Parameter(torch.zeros(d_model))

    def forward(
        self, context: torch.Tensor, state: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(updated state [B, d], gate weights over the new members [B, C])`."""
        weights = torch.softmax(self.gate(context), dim=-1)
        update = (weights.unsqueeze(-1) * tokens.index_select(1, self.candidate_index)).sum(1)
        return state + self.scale * self.project(update), weights
