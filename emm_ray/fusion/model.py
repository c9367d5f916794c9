"""The EMM model: a pool's frozen members, the pool's ensemble, and a learned correction.

`EMMModel(schema, members, config)(sparse, dense)` returns logits `[B, T]` (columns in
`task_names` order; `task_indices` maps them to the schema's label columns), so it trains
in the same generic loop as any other model. Three separable parts, each a setting of
`FusionConfig`, which is what makes the ablations configurations rather than copies:

- the pool's ensemble (`emm_ray.fusion.ensemble`, with `prediction: pool_residual`):
  per task, the mean or a stacking of its own members' end-to-end logits;
- the correction (`correction`): the AKF stack (`emm_ray.fusion.stack`), a plain MLP on
  the members' last hidden states (`emm_ray.fusion.correction`), or none;
- a per-task switch (kept beside the task's ensemble): after training, a task keeps its correction
  only if it beats the bare ensemble on validation (`finish_training`), so no task ends
  below its own start. A task's correction feeds no other task, so the choice is exact.

Only fusion parameters are trainable: adapters, gates, merges, towers, correction heads
and, if configured, the fresh embedding. The pool's embeddings and blocks are `Frozen`
and stay in eval mode whatever mode the model is in; every frozen member runs once per
forward end to end (its ensemble logit and last hidden state) and, for the AKF stack,
its levels after the first once more, since the stack feeds fused state back into them.
What depends on the rows alone (`precompute`: the members' logits, hidden states and
level-0 outputs) is computed once per split by the training loop and passed back in.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from emm_ray.checksum import parameter_checksum
from emm_ray.data.batch import Batch
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError, DataError
from emm_ray.fusion.akf import GateRecord
from emm_ray.fusion.config import FusionConfig
from emm_ray.fusion.correction import MLPCorrection
from emm_ray.fusion.decompose import AlignedMember, PoolMember, check_members, derive_levels
from emm_ray.fusion.ensemble import PoolEnsemble
from emm_ray.fusion.frozen import freeze_, keep_frozen_in_eval
from emm_ray.fusion.stack import AKFStack, PoolLayout
from emm_ray.models.base import FlatInput
from emm_ray.train.collect import RowCollector

logger = logging.getLogger(__name__)


@dataclass
class FusedOutput:
    """One forward, in parts: `logits = base + enabled * correction` (per task).

    `base` is the ensemble (zeros with `prediction: tower`), `correction` what the
    trained part adds (zeros with `correction: none`); `records` what every gate did.
    """

    base: torch.Tensor
    correction: torch.Tensor
    logits: torch.Tensor
    records: list[GateRecord]


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
        self.layout = PoolLayout()
        self.members = nn.ModuleList()
        self.manifests: dict[str, dict[str, Any]] = {}
        self.steps: list[list[str]] = []
        self.ensemble = PoolEnsemble()
        self.stack = (
            AKFStack(schema, config, self.num_levels, self.layout)
            if config.correction == "akf"
            else None
        )
        residual = config.prediction == "pool_residual"
        self.heads = (
            MLPCorrection(
                config.tower_hidden,
                residual,
                FlatInput(schema, config.fresh_embedding_dim)
                if config.embedding == "fresh"
                else None,
            )
            if config.correction == "mlp"
            else None
        )
        self.open_tasks: list[int] = []
        pool_tasks = {m.task for m in members}
        self.layout.task_names.extend(t for t in schema.task_names if t in pool_tasks)
        self._append_members(members)
        self.open_tasks = list(range(len(self.task_names)))
        for task in self.open_tasks:
            self._append_task_parts(task)

    @property
    def task_names(self) -> list[str]:
        return self.layout.task_names

    @property
    def task_indices(self) -> list[int]:
        """Schema label columns of the logits' columns."""
        return [self.schema.task_index(t) for t in self.task_names]

    @property
    def member_names(self) -> list[str]:
        return self.layout.member_names

    def train(self, mode: bool = True) -> EMMModel:
        """Switch the fusion parts' mode; frozen parts stay in eval mode regardless."""
        super().train(mode)
        keep_frozen_in_eval(self)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        cached: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits `[B, T]`, one column per task in `task_names`.

        `cached`: these rows' `precompute` output, if the caller kept it (the training
        loop does for in-memory splits; streamed shards carry it as columns).
        """
        return self.parts(sparse, dense, trace=False, cached=cached, skip_unused=True).logits

    def run(
        self, sparse: torch.Tensor, dense: torch.Tensor, trace: bool = True
    ) -> tuple[torch.Tensor, list[GateRecord]]:
        """Logits and, with `trace`, what every gate did for these rows."""
        output = self.parts(sparse, dense, trace)
        return output.logits, output.records

    @torch.no_grad()
    def precompute(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the frozen pool computes from the rows alone, per row (no autograd).

        `logit.<i>` (and `hidden.<i>` for the MLP correction): founding member i's own
        end-to-end logit (last hidden state), which the ensemble (the MLP heads) reads;
        `level0.<i>`: member i's level-0 component output, when the AKF stack reads the
        pool's own embeddings. None of it changes while fusion trains, so the training
        loop computes it once per split instead of at every step of every epoch.
        """
        return self._frozen_features(sparse, dense)[0]

    def precompute_names(self) -> list[str]:
        """The names `precompute` returns, in order, without running anything."""
        return [name for _, names in self._feature_plan() for name in names]

    def stored_names(self) -> list[str]:
        """The features worth storing beside a streamed split: the members' logits.

        Level outputs are as wide as the members' layers (DCN-v2 carries its input through
        the cross network): streaming them through Ray Data was measured slower than
        recomputing them, and at Ali-CCP's size they would not fit on disk comfortably
        (docs/ARCHITECTURE.md). In memory every feature is kept (`precompute`).
        """
        return [name for name in self.precompute_names() if name.startswith("logit.")]

    def precompute_key(self, names: Sequence[str] | None = None) -> str:
        """Names exactly what is stored: the frozen pool's weights (checksum), the feature
        names (`names`, default all) and the schema. Stored features are reused only under
        this key, so a changed pool never reads stale ones."""
        frozen = {
            f"{name}/{key}": tensor
            for name, member in zip(self.member_names, self.members, strict=True)
            for key, tensor in member.frozen_state().items()
        }
        chosen = self.precompute_names() if names is None else list(names)
        identity = [parameter_checksum(frozen), self.schema.hash, *chosen]
        return hashlib.sha256("|".join(identity).encode()).hexdigest()[:24]

    def _stored_levels(self) -> int:
        """How many leading levels of component outputs depend on the rows alone."""
        if self.stack is None or self.stack.fresh_embedding is not None:
            return 0
        return self.num_levels if self.config.component_input == "none" else 1

    def _feature_plan(self) -> list[tuple[int, list[str]]]:
        """Per member that runs on the rows alone: its index and the features it yields."""
        founders = {i for own in self.layout.founding for i in own}
        needs_native = self.config.prediction == "pool_residual" or self.heads is not None
        levels = self._stored_levels()
        plan = []
        for i in range(len(self.members)):
            native = needs_native and i in founders
            names = [f"level{level}.{i}" for level in range(levels)]
            if native:
                names.append(f"logit.{i}")
                if self.heads is not None:
                    names.append(f"hidden.{i}")
            if names:
                plan.append((i, names))
        return plan

    def _frozen_features(
        self, sparse: torch.Tensor, dense: torch.Tensor, only: set[str] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
        """`precompute`'s features (those in `only`, if given), and the founding members'
        embeddings computed on the way.

        Each member runs once, level by level, as far as its features need: the level
        outputs the stack reads, then on to its tower for its own logit.
        """
        founders = {i for own in self.layout.founding for i in own}
        features: dict[str, torch.Tensor] = {}
        embedded: dict[int, torch.Tensor] = {}
        for i, planned in self._feature_plan():
            names = planned if only is None else [n for n in planned if n in only]
            if not names:
                continue
            member = self.members[i]
            state = member.embed(sparse, dense)
            if i in founders:
                embedded[i] = state
            native = f"logit.{i}" in names or f"hidden.{i}" in names
            levels = [int(n[len("level") : n.index(".")]) for n in names if n.startswith("level")]
            depth = self.num_levels if native else max(levels) + 1
            for level in range(depth):
                state = member.components[level](state)
                if f"level{level}.{i}" in names:
                    features[f"level{level}.{i}"] = state
            if f"logit.{i}" in names:
                features[f"logit.{i}"] = member.tower(state)
            if f"hidden.{i}" in names:
                features[f"hidden.{i}"] = state
        return features, embedded

    def parts(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        trace: bool,
        cached: dict[str, torch.Tensor] | None = None,
        skip_unused: bool = False,
    ) -> FusedOutput:
        """The forward pass, keeping the ensemble and the correction apart.

        With `skip_unused`, a model whose every task kept the bare ensemble
        (`finish_training`) does not compute its correction at all: the logits are the
        same, and its forward costs what its pool's does.

        Each frozen member runs at most once per call: its input-only part (`precompute`,
        or `cached`) once, and with the AKF stack in `residual` / `fused` mode its levels
        after the first once more, on the fused state.
        """
        founding = self.layout.founding
        residual = self.config.prediction == "pool_residual"
        if skip_unused and residual and not bool(self.ensemble.correction_mask().any()):
            features = cached or self._native_features(sparse, dense)
            base = self._ensemble(features)
            return FusedOutput(base, torch.zeros_like(base), base, [])
        missing = set(self.precompute_names()) - set(cached or {})
        features, embedded = self._frozen_features(sparse, dense, missing)
        features.update(cached or {})
        if self.stack is not None and self.stack.fresh_embedding is None:
            for i in (i for own in founding for i in own if i not in embedded):
                embedded[i] = self.members[i].embed(sparse, dense)  # level-0 gate contexts
        rows = sparse.shape[0]
        records: list[GateRecord] = []
        if self.stack is not None:
            correction, records = self.stack(self.members, sparse, dense, embedded, features, trace)
        elif self.heads is not None:
            correction = self.heads(
                [torch.cat([features[f"hidden.{i}"] for i in own], dim=1) for own in founding],
                sparse,
                dense,
            )
        else:
            correction = sparse.new_zeros(rows, len(self.task_names), dtype=torch.float32)
        if residual:
            base = self._ensemble(features)
            logits = base + self.ensemble.correction_mask().to(correction.dtype) * correction
        else:
            base = torch.zeros_like(correction)
            logits = correction
        return FusedOutput(base, correction, logits, records)

    def _ensemble(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[B, T]` ensemble logits from each task's inputs' `logit.<i>` features."""
        return self.ensemble(
            [
                torch.stack([features[f"logit.{i}"] for i in inputs], 1)
                for inputs in self.layout.ensemble_inputs
            ]
        )

    def _native_features(
        self, sparse: torch.Tensor, dense: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Only the founding members' own logits: each founder run once, end to end."""
        return {
            f"logit.{i}": self.members[i].native(self.members[i].embed(sparse, dense))[1]
            for own in self.layout.founding
            for i in own
        }

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Batch], max_rows: int = 1 << 20) -> None:
        """Fit the `stacked` ensembles not fitted yet on up to `max_rows` held-out rows.

        The training loop calls this once before training, with the validation data
        (`emm_ray.fusion.ensemble` says why). Every batch is consumed (a Ray Data shard
        is left at a clean epoch end) but only the first `max_rows` rows run through the
        pool: a few parameters per task need no more.
        """
        if self.config.prediction != "pool_residual" or self.config.ensemble != "stacked":
            return
        tasks = self.ensemble.unfitted()
        if not tasks:
            return
        device = next(self.parameters()).device
        logits = {t: RowCollector() for t in tasks}
        labels = RowCollector()
        for batch in batches:
            if labels.rows >= max_rows:
                continue
            batch = batch.slice(slice(0, max_rows - labels.rows)).to(device)
            features = batch.cached or self.precompute(batch.sparse, batch.dense)
            for task in tasks:
                logits[task].append(
                    torch.stack(
                        [features[f"logit.{i}"] for i in self.layout.ensemble_inputs[task]], 1
                    ).float()
                )
            labels.append(batch.labels)
        if not labels.rows:
            raise DataError("cannot fit the pool ensemble: the validation data yielded no rows")
        label_columns = labels.result()
        self.ensemble.fit(
            tasks,
            {t: logits[t].result() for t in tasks},
            {t: label_columns[:, self.schema.task_index(self.task_names[t])] for t in tasks},
            self.task_names,
        )

    @torch.no_grad()
    def finish_training(self, batches: Iterable[Batch]) -> dict[str, dict[str, float]]:
        """Per task, keep the trained correction only where it beats the bare ensemble.

        The training loop calls this after restoring the best weights, with the
        validation data. Only the tasks of the latest step choose (`open_tasks`): after
        plug-and-play, existing tasks keep their choice, so they stay as they were.
        Returns, per task, the validation AUC of the ensemble alone and with the
        correction, and whether the correction was kept.
        """
        if self.config.prediction != "pool_residual" or self.config.correction == "none":
            return {}
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        bases, corrected, labels = RowCollector(), RowCollector(), RowCollector()
        try:
            for batch in batches:
                batch = batch.to(device)
                output = self.parts(batch.sparse, batch.dense, trace=False, cached=batch.cached)
                bases.append(output.base.float())
                corrected.append((output.base + output.correction).float())
                labels.append(batch.labels[:, self.task_indices])
        finally:
            self.train(was_training)
        if not labels.rows:
            raise DataError("cannot choose the corrections: the validation data yielded no rows")
        base, full, label = bases.result(), corrected.result(), labels.result()
        choice: dict[str, dict[str, float]] = {}
        for task in self.open_tasks:
            name = self.task_names[task]
            y = label[:, task].numpy()
            if len(set(y.tolist())) < 2:
                raise DataError(
                    f"cannot choose the correction of task {name!r}: its {len(y)} validation "
                    "labels do not hold both classes"
                )
            bare = float(roc_auc_score(y, base[:, task].numpy()))
            with_correction = float(roc_auc_score(y, full[:, task].numpy()))
            keep = with_correction > bare
            self.ensemble.tasks[task].correction_enabled.fill_(keep)
            choice[name] = {"ensemble_auc": bare, "corrected_auc": with_correction, "kept": keep}
        logger.info("per-task corrections after training (validation AUC): %s", choice)
        return choice

    def add_members(self, members: Sequence[PoolMember]) -> None:
        """Plug-and-play: freeze everything that exists, then add `members` and their new parts.

        A member of a new task brings that task's ensemble and correction; with the AKF
        stack, every task that already existed gets, per level, a zero-initialised
        `PlugIn` over the new members.
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
        self.open_tasks = list(range(old_tasks, len(self.task_names)))
        for task in self.open_tasks:
            self._append_task_parts(task)
        if self.stack is not None:
            self.stack.add_plugins(range(old_tasks), new_indices, self.members)

    def plugin_scales(self) -> list[nn.Parameter]:
        """The zero-initialised scales through which added members reach existing tasks."""
        if self.stack is None:
            return []
        return [plugin.scale for level in self.stack.plugins for plugin in level]

    def _append_members(self, members: Sequence[PoolMember]) -> list[int]:
        layout = self.layout
        d_model = self.config.d_model if self.stack is not None else None
        fresh_width = self.stack.fresh_width if self.stack is not None else None
        new_tasks = len(layout.founding)
        indices = []
        for member in members:
            if member.task not in layout.task_names:
                self.schema.task_index(member.task)
                layout.task_names.append(member.task)
            task = layout.task_names.index(member.task)
            indices.append(len(self.members))
            self.members.append(
                AlignedMember(
                    member, self.num_levels, d_model, self.config.component_input, fresh_width
                )
            )
            layout.member_names.append(member.name)
            layout.member_tasks.append(task)
            self.manifests[member.name] = member.description()
            while len(layout.founding) < len(layout.task_names):
                layout.founding.append([])
            if task >= new_tasks:
                layout.founding[task].append(indices[-1])
        self.steps.append([m.name for m in members])
        return indices

    def _append_task_parts(self, task: int) -> None:
        founding = self.layout.founding[task]
        inputs = (
            sorted(i for own in self.layout.founding for i in own)
            if self.config.ensemble_inputs == "pool"
            else list(founding)
        )
        self.layout.ensemble_inputs.append(inputs)
        self.ensemble.add_task(len(inputs))
        if self.stack is not None:
            self.stack.add_task(task, self.members)
        if self.heads is not None:
            self.heads.add_task(sum(self.members[i].hidden_width for i in founding))
