"""PLE (Tang et al., RecSys 2020): stacked CGC levels of task-specific and shared experts.

Per level, task t's gate mixes its own experts and the shared experts (input: task t's
state); the shared gate mixes all experts (input: the shared state) and feeds the next
level's shared experts. The last level has no shared gate; towers read the task states.
"""

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


class PLEHyperparameters(BaselineHyperparameters):
    levels: PositiveInt = 2
    specific_experts: PositiveInt = 2
    shared_experts: PositiveInt = 2
    expert_hidden: Widths = (128, 64)
    tower: tuple[int, ...] = (64,)


class ExtractionLevel(nn.Module):
    """One CGC level: experts per task and shared, gates per task (and shared if not last)."""

    def __init__(self, in_width: int, tasks: int, config: PLEHyperparameters, last: bool) -> None:
        super().__init__()
        hidden, dropout = config.expert_hidden, config.dropout
        self.specific = nn.ModuleList(
            nn.ModuleList(mlp(in_width, hidden, dropout) for _ in range(config.specific_experts))
            for _ in range(tasks)
        )
        self.shared = nn.ModuleList(
            mlp(in_width, hidden, dropout) for _ in range(config.shared_experts)
        )
        own = config.specific_experts + config.shared_experts
        self.task_gates = nn.ModuleList(nn.Linear(in_width, own) for _ in range(tasks))
        every = tasks * config.specific_experts + config.shared_experts
        self.shared_gate = None if last else nn.Linear(in_width, every)

    def forward(
        self, task_states: list[torch.Tensor], shared_state: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        shared = [expert(shared_state) for expert in self.shared]
        specific = [
            [expert(state) for expert in experts]
            for experts, state in zip(self.specific, task_states, strict=True)
        ]
        outputs = [
            _mix(gate, state, [*own, *shared])
            for gate, state, own in zip(self.task_gates, task_states, specific, strict=True)
        ]
        if self.shared_gate is None:
            return outputs, shared_state
        every = [expert for own in specific for expert in own] + shared
        return outputs, _mix(self.shared_gate, shared_state, every)


def _mix(gate: nn.Linear, state: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
    weights = torch.softmax(gate(state), dim=-1)
    return torch.einsum("be,bed->bd", weights, torch.stack(experts, dim=1))


class PLE(MultiTaskBaseline):
    name = "ple"
    Hyperparameters = PLEHyperparameters

    def build(self, config: PLEHyperparameters) -> None:
        tasks = len(self.task_names)
        widths = [self.input.out_width] + [config.expert_hidden[-1]] * (config.levels - 1)
        self.levels = nn.ModuleList(
            ExtractionLevel(width, tasks, config, last=i == config.levels - 1)
            for i, width in enumerate(widths)
        )
        self.towers = nn.ModuleList(
            Head(config.expert_hidden[-1], config.tower, config.dropout) for _ in range(tasks)
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        inputs = self.input(sparse, dense)
        task_states, shared_state = [inputs] * len(self.task_names), inputs
        for level in self.levels:
            task_states, shared_state = level(task_states, shared_state)
        return torch.stack(
            [tower(state) for tower, state in zip(self.towers, task_states, strict=True)], dim=1
        )
