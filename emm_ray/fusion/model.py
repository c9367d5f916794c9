"""The EMM model: a pool's frozen components, stacked AKF levels, and a tower per task.

`EMMModel(schema, members, config)(sparse, dense)` returns logits `[B, T]` (columns in
`task_names` order; `task_indices` maps them to the schema's label columns), so it trains
in the same generic loop as any other model. Only fusion parameters are trainable:
adapters, gates, merges, towers and, if configured, the fresh embedding. The pool's
embeddings and blocks are `Frozen` and stay in eval mode whatever mode the model is in.

Level by level: every member's component runs on its input (see `decompose`), its output
becomes a d_model token; each task's AKF module mixes its own tokens and fuses the
selected other-task tokens into the task's fused state; plug-ins (members added later)
add their zero-initialised updates; the fused state feeds the next level's components
and, after the last level, the task's tower. With `prediction: pool_residual` the
tower (last layer zero-initialised) adds to the ensemble of the task's own members
(`ensemble`: their mean, or a stacking fitted by `calibrate` before training), so fusion
starts from the pool's ensemble and learns only a correction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from emm_ray.data.batch import Batch
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError, DataError
from emm_ray.fusion.akf import GateRecord, task_fusion
from emm_ray.fusion.config import FusionConfig
from emm_ray.fusion.decompose import AlignedMember, PoolMember, check_members, derive_levels
from emm_ray.fusion.ensemble import TaskEnsemble
from emm_ray.fusion.frozen import freeze_, keep_frozen_in_eval
from emm_ray.fusion.plug import PlugIn
from emm_ray.models.base import FieldEmbedding


class FreshEmbedding(nn.Module):
    """A new embedding shared by all members: `[emb(sparse_1) .. emb(sparse_S) | dense]`."""

    def __init__(self, schema: FeatureSchema, dim: int) -> None:
        super().__init__()
        self.fields = FieldEmbedding(schema.cardinalities, dim)
        self.out_width = len(schema.sparse) * dim + len(schema.dense)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.fields(sparse).flatten(1), dense], dim=1)


class Tower(nn.Module):
    """A task's prediction head on its final fused state: an MLP to one logit."""

    def __init__(self, d_model: int, hidden: Sequence[int], zero_output: bool) -> None:
        super().__init__()
        widths = [d_model, *hidden]
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


class EMMModel(nn.Module):
    """Fused multi-task model over a pool of frozen single-task models."""

    def __init__(
        self, schema: FeatureSchema, members: Sequence[PoolMember], config: FusionConfig
    ) -> None:
        super().__init__()
        check_members(members, schema.hash)
        self.schema = schema
        self.config = config
        self.num_levels = derive_levels(members, config.levels)
        self.fresh_embedding = (
            FreshEmbedding(schema, config.fresh_embedding_dim)
            if config.embedding == "fresh"
            else None
        )
        pool_tasks = {m.task for m in members}
        self.task_names: list[str] = [t for t in schema.task_names if t in pool_tasks]
        self.members = nn.ModuleList()
        self.member_tasks: list[int] = []
        self.manifests: dict[str, dict[str, Any]] = {}
        self.steps: list[list[str]] = []
        self.fusion = nn.ModuleList(nn.ModuleList() for _ in range(self.num_levels))
        self.plugins = nn.ModuleList(nn.ModuleList() for _ in range(self.num_levels))
        self.towers = nn.ModuleList()
        self.ensembles = nn.ModuleList()
        self.context_members: list[list[int]] = []
        self._append_members(members)
        for task in range(len(self.task_names)):
            self._append_task_parts(task)

    @property
    def task_indices(self) -> list[int]:
        """Schema label columns of the logits' columns."""
        return [self.schema.task_index(t) for t in self.task_names]

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    def train(self, mode: bool = True) -> EMMModel:
        """Switch the fusion parts' mode; frozen parts stay in eval mode regardless."""
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Logits `[B, T]`, one column per task in `task_names`."""
        return self.run(sparse, dense, trace=False)[0]

    def run(
        self, sparse: torch.Tensor, dense: torch.Tensor, trace: bool = True
    ) -> tuple[torch.Tensor, list[GateRecord]]:
        """Logits and, with `trace`, what every gate did for these rows."""
        records: list[GateRecord] = []
        own_embeddings: dict[int, torch.Tensor] = {}
        if self.fresh_embedding is not None:
            shared = self.fresh_embedding(sparse, dense)
            previous = [shared] * len(self.members)
            contexts = [shared] * len(self.task_names)
        else:
            previous = [m.embed(sparse, dense) for m in self.members]
            own_embeddings = dict(enumerate(previous))
            contexts = [
                torch.cat([previous[i] for i in own], dim=1) if len(own) > 1 else previous[own[0]]
                for own in self.context_members
            ]
        fused: list[torch.Tensor] = []
        for level in range(self.num_levels):
            outputs, tokens = [], []
            for index, member in enumerate(self.members):
                state = fused[self.member_tasks[index]] if level else None
                output, token = member.run_level(
                    level, member.component_input(level, previous[index], state)
                )
                outputs.append(output)
                tokens.append(token)
            token_stack = torch.stack(tokens, dim=1)
            mixed = [f.mix(contexts[t], token_stack) for t, f in enumerate(self.fusion[level])]
            mixtures = torch.stack([mixture for mixture, _ in mixed], dim=1)
            fused = []
            for task, module in enumerate(self.fusion[level]):
                state, weights, selected = module.fuse(
                    contexts[task], mixed[task][0], token_stack, mixtures
                )
                fused.append(state)
                if trace:
                    records += self._records(level, task, module, mixed[task][1], weights, selected)
            for plugin in self.plugins[level]:
                fused[plugin.task], weights = plugin(
                    contexts[plugin.task], fused[plugin.task], token_stack
                )
                if trace:
                    records.append(
                        GateRecord(
                            level,
                            self.task_names[plugin.task],
                            "plugin",
                            self._names(plugin.candidate_index),
                            weights,
                            weights > 0,
                        )
                    )
            previous, contexts = outputs, fused
        logits = torch.stack(
            [tower(state) for tower, state in zip(self.towers, fused, strict=True)], 1
        )
        if self.config.prediction == "pool_residual":
            pool = self._member_logits(sparse, dense, own_embeddings)
            logits = logits + torch.stack(
                [ensemble(pool[t]) for t, ensemble in enumerate(self.ensembles)], 1
            )
        return logits, records

    def _member_logits(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        embedded: dict[int, torch.Tensor],
        tasks: Sequence[int] | None = None,
    ) -> dict[int, torch.Tensor]:
        """Per task (all, or `tasks`), `[B, k]` logits of its founding members, each run
        end to end frozen (members added later do not enter the ensemble)."""
        tasks = range(len(self.context_members)) if tasks is None else tasks
        return {
            task: torch.stack(
                [
                    self.members[i].native_logit(
                        embedded[i] if i in embedded else self.members[i].embed(sparse, dense)
                    )
                    for i in self.context_members[task]
                ],
                1,
            )
            for task in tasks
        }

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Batch], max_rows: int = 1 << 20) -> None:
        """Fit the `stacked` ensembles not fitted yet on up to `max_rows` held-out rows.

        The training loop calls this once before training, with the validation data
        (`emm_ray.fusion.ensemble` says why). Every batch is consumed (a
        Ray Data shard is left at a clean epoch end) but only the first `max_rows` rows
        run through the pool: a few parameters per task need no more.
        """
        if self.config.prediction != "pool_residual" or self.config.ensemble != "stacked":
            return
        tasks = [t for t, ensemble in enumerate(self.ensembles) if not bool(ensemble.fitted)]
        if not tasks:
            return
        device = next(self.parameters()).device
        logits: dict[int, list[torch.Tensor]] = {t: [] for t in tasks}
        labels: list[torch.Tensor] = []
        rows = 0
        for batch in batches:
            if rows >= max_rows:
                continue
            batch = batch.slice(slice(0, max_rows - rows)).to(device)
            for task, part in self._member_logits(batch.sparse, batch.dense, {}, tasks).items():
                logits[task].append(part.float())
            labels.append(batch.labels)
            rows += len(batch)
        if not rows:
            raise DataError("cannot fit the pool ensemble: the validation data yielded no rows")
        label_columns = torch.cat(labels)
        for task in tasks:
            name = self.task_names[task]
            self.ensembles[task].fit(
                torch.cat(logits[task]),
                label_columns[:, self.schema.task_index(name)],
                name,
            )

    def add_members(self, members: Sequence[PoolMember]) -> None:
        """Plug-and-play: freeze everything that exists, then add `members` and their new parts.

        A member of a new task brings that task's AKF modules and tower; every task that
        already existed gets, per level, a zero-initialised `PlugIn` over the new members.
        """
        if not members:
            raise ConfigError("add_members needs at least one new member")
        check_members(members, self.schema.hash)
        taken = sorted({m.name for m in members} & set(self.member_names))
        if taken:
            raise ConfigError(f"the fused model already has members named {taken}")
        for module in list(self.modules())[1:]:
            if not isinstance(module, nn.ModuleList):
                freeze_(module)
        old_tasks = len(self.task_names)
        new_indices = self._append_members(members)
        for task in range(old_tasks, len(self.task_names)):
            self._append_task_parts(task)
        for level in range(self.num_levels):
            for task in range(old_tasks):
                self.plugins[level].append(
                    PlugIn(task, self._context_width(level, task), new_indices, self.config.d_model)
                )

    def plugin_scales(self) -> list[nn.Parameter]:
        """The zero-initialised scales through which added members reach existing tasks."""
        return [plugin.scale for level in self.plugins for plugin in level]

    def _append_members(self, members: Sequence[PoolMember]) -> list[int]:
        fresh_width = None if self.fresh_embedding is None else self.fresh_embedding.out_width
        indices = []
        for member in members:
            if member.task not in self.task_names:
                self.schema.task_index(member.task)
                self.task_names.append(member.task)
            task = self.task_names.index(member.task)
            indices.append(len(self.members))
            self.members.append(
                AlignedMember(
                    member,
                    self.num_levels,
                    self.config.d_model,
                    self.config.component_input,
                    fresh_width,
                )
            )
            self.member_tasks.append(task)
            self.manifests[member.name] = member.description()
            while len(self.context_members) < len(self.task_names):
                self.context_members.append([])
            if task >= len(self.towers):
                self.context_members[task].append(indices[-1])
        self.steps.append([m.name for m in members])
        return indices

    def _append_task_parts(self, task: int) -> None:
        own = [i for i, t in enumerate(self.member_tasks) if t == task]
        if self.config.variant == "reference":
            candidates = [t for t in range(len(self.task_names)) if t != task]
        else:
            candidates = [i for i, t in enumerate(self.member_tasks) if t != task]
        for level in range(self.num_levels):
            self.fusion[level].append(
                task_fusion(self.config, self._context_width(level, task), own, candidates)
            )
        residual = self.config.prediction == "pool_residual"
        self.towers.append(Tower(self.config.d_model, self.config.tower_hidden, residual))
        self.ensembles.append(TaskEnsemble(len(self.context_members[task])))

    def _context_width(self, level: int, task: int) -> int:
        if level:
            return self.config.d_model
        if self.fresh_embedding is not None:
            return self.fresh_embedding.out_width
        return sum(self.members[i].embedding_width for i in self.context_members[task])

    def _records(
        self,
        level: int,
        task: int,
        module: nn.Module,
        task_weights: torch.Tensor,
        fusion_weights: torch.Tensor | None,
        selected: torch.Tensor | None,
    ) -> list[GateRecord]:
        name = self.task_names[task]
        records = [
            GateRecord(
                level, name, "task", self._names(module.own_index), task_weights, task_weights > 0
            )
        ]
        if fusion_weights is not None and selected is not None:
            candidates = (
                [self.task_names[int(i)] for i in module.candidate_index]
                if self.config.variant == "reference"
                else self._names(module.candidate_index)
            )
            records.append(GateRecord(level, name, "fusion", candidates, fusion_weights, selected))
        return records

    def _names(self, index: torch.Tensor) -> list[str]:
        return [self.members[int(i)].name for i in index]
