"""Heads that turn a state into one task's logit (or logit correction).

`Tower` is the AKF stack's prediction head on a task's final fused state.
`MLPCorrection` is the control the AKF stack is measured against: per task, a plain MLP
on the concatenated last hidden states of the task's own founding members, with no gates
and no cross-task path; with `embedding: fresh` it also reads a fresh embedding of the
rows, as the AKF stack then does, so the two differ only in the stack. Both start at
exactly zero when they correct the pool's ensemble (`zero_output`), so training can only
move the prediction away from the ensemble where that lowers the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from emm_ray.models.base import FlatInput


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
    """Per task, a `Tower` over its own members' last hidden states (concatenated), and
    over the shared `fresh_embedding` of the rows when there is one."""

    def __init__(
        self, hidden: Sequence[int], zero_output: bool, fresh_embedding: FlatInput | None = None
    ) -> None:
        super().__init__()
        self.hidden = tuple(hidden)
        self.zero_output = zero_output
        self.fresh_embedding = fresh_embedding
        self.heads = nn.ModuleList()

    def add_task(self, members_width: int) -> None:
        fresh = 0 if self.fresh_embedding is None else self.fresh_embedding.out_width
        self.heads.append(Tower(members_width + fresh, self.hidden, self.zero_output))

    def forward(
        self, member_states: list[torch.Tensor], sparse: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        """`[B, T]` from, per task, `[B, width_t]` of its members' states side by side."""
        if self.fresh_embedding is not None:
            shared = self.fresh_embedding(sparse, dense)
            member_states = [torch.cat([state, shared], dim=1) for state in member_states]
        return torch.stack(
            [head(state) for head, state in zip(self.heads, member_states, strict=True)], dim=1
        )
