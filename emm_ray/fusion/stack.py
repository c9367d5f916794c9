"""The AKF stack: L levels of task fusion over the members' components, then a tower per task.

Level by level: every member's component runs on its input (see `decompose`), its output
becomes a d_model token; each task's AKF module mixes its own tokens and fuses the
selected other-task tokens into the task's fused state; plug-ins (members added later)
add their zero-initialised updates; the fused state feeds the next level's components
and, after the last level, the task's tower. The stack owns only trainable parts (and
the fresh embedding, if configured): the frozen members belong to the fused model and
are passed in, with the `PoolLayout` saying which member serves which task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from emm_ray.data.schema import FeatureSchema
from emm_ray.fusion.akf import GateRecord, task_fusion
from emm_ray.fusion.config import FusionConfig
from emm_ray.fusion.correction import Tower
from emm_ray.fusion.decompose import AlignedMember
from emm_ray.fusion.plug import PlugIn
from emm_ray.models.base import FlatInput


@dataclass
class PoolLayout:
    """Which member serves which task, shared by the fused model's parts.

    `founding[t]` are the members task t was created with: they form its level-0 context
    (and its ensemble's inputs with `ensemble_inputs: own`); members plugged in later
    reach it only through plug-ins. `ensemble_inputs[t]` are the members whose logits
    task t's ensemble reads, fixed when the task is created.
    """

    task_names: list[str] = field(default_factory=list)
    member_names: list[str] = field(default_factory=list)
    member_tasks: list[int] = field(default_factory=list)
    founding: list[list[int]] = field(default_factory=list)
    ensemble_inputs: list[list[int]] = field(default_factory=list)

    def own(self, task: int) -> list[int]:
        return [i for i, t in enumerate(self.member_tasks) if t == task]

    def others(self, task: int) -> list[int]:
        return [i for i, t in enumerate(self.member_tasks) if t != task]


class AKFStack(nn.Module):
    """AKF modules per level and task, plug-ins per level, and a tower per task."""

    def __init__(
        self, schema: FeatureSchema, config: FusionConfig, num_levels: int, layout: PoolLayout
    ) -> None:
        super().__init__()
        self.config = config
        self.num_levels = num_levels
        self.layout = layout
        self.fresh_embedding = (
            FlatInput(schema, config.fresh_embedding_dim) if config.embedding == "fresh" else None
        )
        self.fusion = nn.ModuleList(nn.ModuleList() for _ in range(num_levels))
        self.plugins = nn.ModuleList(nn.ModuleList() for _ in range(num_levels))
        self.towers = nn.ModuleList()

    @property
    def fresh_width(self) -> int | None:
        return None if self.fresh_embedding is None else self.fresh_embedding.out_width

    def add_task(self, task: int, members: Sequence[AlignedMember]) -> None:
        """AKF modules of a new task at every level, over every member there is now."""
        if self.config.variant == "reference":
            candidates = [t for t in range(len(self.layout.task_names)) if t != task]
        else:
            candidates = self.layout.others(task)
        own = self.layout.own(task)
        for level in range(self.num_levels):
            width = self.context_width(level, task, members)
            self.fusion[level].append(task_fusion(self.config, width, own, candidates))
        residual = self.config.prediction == "pool_residual"
        self.towers.append(Tower(self.config.d_model, self.config.tower_hidden, residual))

    def add_plugins(
        self, tasks: Sequence[int], new_members: Sequence[int], members: Sequence[AlignedMember]
    ) -> None:
        """Per level, a zero-initialised `PlugIn` over `new_members` for each of `tasks`."""
        for level in range(self.num_levels):
            for task in tasks:
                width = self.context_width(level, task, members)
                self.plugins[level].append(PlugIn(task, width, new_members, self.config.d_model))

    def context_width(self, level: int, task: int, members: Sequence[AlignedMember]) -> int:
        if level:
            return self.config.d_model
        if self.fresh_embedding is not None:
            return self.fresh_embedding.out_width
        return sum(members[i].embedding_width for i in self.layout.founding[task])

    def forward(
        self,
        members: Sequence[AlignedMember],
        sparse: torch.Tensor,
        dense: torch.Tensor,
        embedded: dict[int, torch.Tensor],
        stored: dict[str, torch.Tensor],
        trace: bool,
    ) -> tuple[torch.Tensor, list[GateRecord]]:
        """Tower outputs `[B, T]` and, with `trace`, what every gate did for these rows.

        With the pool's own embeddings, `embedded[i]` is founding member i's frozen
        embedding of the rows (its task's level-0 context) and `stored["level<l>.<i>"]`
        member i's component output at level l wherever that depends on the rows alone
        (level 0; every level with `component_input: none`), possibly from a cache.
        """
        layout = self.layout
        records: list[GateRecord] = []
        previous: list[torch.Tensor] = []
        if self.fresh_embedding is not None:
            shared = self.fresh_embedding(sparse, dense)
            previous = [shared] * len(members)
            contexts = [shared] * len(layout.task_names)
        else:
            contexts = [
                torch.cat([embedded[i] for i in own], dim=1) if len(own) > 1 else embedded[own[0]]
                for own in layout.founding
            ]
        fused: list[torch.Tensor] = []
        for level in range(self.num_levels):
            outputs, tokens = [], []
            for index, member in enumerate(members):
                given = stored.get(f"level{level}.{index}")
                if given is not None:
                    output, token = given, member.token(level, given)
                else:
                    state = fused[layout.member_tasks[index]] if level else None
                    output, token = member.run_level(
                        level, member.component_input(level, previous[index], state)
                    )
                outputs.append(output)
                tokens.append(token)
            token_stack = torch.stack(tokens, dim=1)
            mixed = [f.mix(contexts[t], token_stack) for t, f in enumerate(self.fusion[level])]
            if level and self.config.component_input == "none":  # the fused state goes on here
                mixed = [(mixture + fused[t], w) for t, (mixture, w) in enumerate(mixed)]
            mixtures = (  # the reference chooses among other tasks' mixtures
                torch.stack([mixture for mixture, _ in mixed], dim=1)
                if self.config.variant == "reference"
                else None
            )
            fused = []
            for task, module in enumerate(self.fusion[level]):
                state, weights, selected, attention = module.fuse(
                    contexts[task], mixed[task][0], token_stack, mixtures, trace
                )
                fused.append(state)
                if trace:
                    records += self._records(
                        level, task, module, mixed[task][1], weights, selected, attention
                    )
            for plugin in self.plugins[level]:
                fused[plugin.task], weights = plugin(
                    contexts[plugin.task], fused[plugin.task], token_stack
                )
                if trace:
                    records.append(
                        GateRecord(
                            level,
                            layout.task_names[plugin.task],
                            "plugin",
                            self._names(plugin.candidate_index),
                            weights,
                            weights > 0,
                        )
                    )
            previous, contexts = outputs, fused
        corrections = torch.stack(
            [tower(state) for tower, state in zip(self.towers, fused, strict=True)], 1
        )
        return corrections, records

    def _records(
        self,
        level: int,
        task: int,
        module: nn.Module,
        task_weights: torch.Tensor,
        fusion_weights: torch.Tensor | None,
        selected: torch.Tensor | None,
        attention: torch.Tensor | None,
    ) -> list[GateRecord]:
        name = self.layout.task_names[task]
        records = [
            GateRecord(
                level, name, "task", self._names(module.own_index), task_weights, task_weights > 0
            )
        ]
        if fusion_weights is None or selected is None or attention is None:
            return records
        candidates = (
            [self.layout.task_names[int(i)] for i in module.candidate_index]
            if self.config.variant == "reference"
            else self._names(module.candidate_index)
        )
        records.append(GateRecord(level, name, "fusion", candidates, fusion_weights, selected))
        own_and_selected = torch.cat([selected.new_ones(len(selected), 1), selected], dim=1)
        records.append(
            GateRecord(
                level, name, "attention", [f"own:{name}", *candidates], attention, own_and_selected
            )
        )
        return records

    def _names(self, index: torch.Tensor) -> list[str]:
        return [self.layout.member_names[int(i)] for i in index]
