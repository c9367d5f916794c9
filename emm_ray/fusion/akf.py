"""Adaptive Knowledge Fusion (AKF): how one task combines components at one level.

Per level l and task t, with context `c_t` (the task's fused state from level l-1, or
the embedding at level 0) and one d_model token per component of the level:

1. task gate: `g_t = softmax(W c_t)` over task t's own components, `u_t = sum_k g_tk E_tk`;
2. fusion gate: which components (or tasks) of the *other* tasks to consult;
3. Multi-Task Merge (MTM): attention over `[u_t; selected]`; its output at `u_t`'s
   position is task t's fused state `h_t`, the input of level l+1.

With `top_k: 0` there is no step 2 and the merge sees only `u_t` (the own-task-only
ablation). Two variants of steps 2-3:

- `emm` (`TaskFusion`): the fusion gate scores every other-task component, keeps the
  top-k of its softmax and passes their log-probabilities into the merge as attention
  priors, so the kept weights get gradients (with or without renormalisation the gate
  would learn; without it, k=1 still learns, since the mass left on dropped candidates
  is part of the objective). MTM is a real Transformer block: multi-head attention,
  residual, LayerNorm, feed-forward, residual, LayerNorm.
- `reference` (`ReferenceTaskFusion`): the authors' formulation. A softmax over the
  other tasks (excluding the own task is the same as masking it), then a hard argmax
  picks one task s and its task-gate mixture `u_s`; argmax passes no gradient, so this
  gate never trains. MTM: `q, k, v` linear maps of `[u_t; u_s]`, each token scores only
  its own `q.k` (scaled by sqrt(d), as in the AITM attention unit this comes from),
  softmax over the two tokens, `h_t` = the weighted sum of `v`; one head, no residual,
  no LayerNorm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emm_ray.fusion.config import FusionConfig


@dataclass
class GateRecord:
    """What one gate of one task at one level did, per row (input of the gate report).

    `weights[b, c]` is the weight candidate `c` received in row `b` (0 where it was not
    selected), `selected[b, c]` whether it was used. Gates: `task` (own components),
    `fusion` (other tasks' components, or tasks in the reference), `attention` (what
    the merge attended to: the own mixture, then each candidate; so a candidate the
    fusion gate keeps but the merge ignores shows up), `plugin` (members added by
    plug-and-play).
    """

    level: int
    task: str
    gate: str
    candidates: list[str]
    weights: torch.Tensor
    selected: torch.Tensor


class TaskGate(nn.Module):
    """Input-conditioned mixture of the task's own components: `softmax(W c)`."""

    def __init__(self, context_width: int, num_components: int) -> None:
        super().__init__()
        self.scores = nn.Linear(context_width, num_components)

    def forward(
        self, context: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(mixture [B, d], weights [B, K])` from tokens `[B, K, d]`."""
        weights = torch.softmax(self.scores(context), dim=-1)
        return (weights.unsqueeze(-1) * tokens).sum(1), weights


class TopKFusionGate(nn.Module):
    """Differentiable top-k choice among other tasks' components.

    Returns the k kept tokens and their log-probabilities under the softmax over all
    candidates; the top-k mask itself is discrete, the kept probabilities are not.
    """

    def __init__(self, context_width: int, num_candidates: int, top_k: int) -> None:
        super().__init__()
        self.scores = nn.Linear(context_width, num_candidates)
        self.top_k = min(top_k, num_candidates)

    def forward(
        self, context: torch.Tensor, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(tokens [B, k, d], log_weights [B, k], index [B, k])` from candidates `[B, N, d]`."""
        log_probs = F.log_softmax(self.scores(context), dim=-1)
        log_weights, index = log_probs.topk(self.top_k, dim=-1)
        tokens = candidates.gather(1, index.unsqueeze(-1).expand(-1, -1, candidates.shape[-1]))
        return tokens, log_weights, index


class MultiTaskMerge(nn.Module):
    """Transformer block over `[own; selected]`, read out at the own token's position.

    Only the own position's output is used, so only its query is computed: this is
    exactly that row of full self-attention. Optional log-weight priors on the selected
    tokens make attention follow the fusion gate (and carry its gradient).
    """

    def __init__(self, d_model: int, heads: int, ffn_multiplier: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attention_norm = nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, ffn_multiplier * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_multiplier * d_model, d_model),
        )
        self.feed_forward_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, own: torch.Tensor, others: torch.Tensor, log_priors: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(fused state [B, d], attention over [own; others] averaged over heads [B, 1+k])`."""
        tokens = torch.cat([own.unsqueeze(1), others], dim=1)
        batch, count, width = tokens.shape
        head_width = width // self.heads
        query = self.query(own).view(batch, 1, self.heads, head_width)
        key = self.key(tokens).view(batch, count, self.heads, head_width)
        value = self.value(tokens).view(batch, count, self.heads, head_width)
        scores = (query * key).sum(-1) / math.sqrt(head_width)
        if log_priors is not None:
            own_prior = log_priors.new_zeros(batch, 1)
            scores = scores + torch.cat([own_prior, log_priors], dim=1).unsqueeze(-1)
        attention = torch.softmax(scores, dim=1)
        mixed = (attention.unsqueeze(-1) * value).sum(1).reshape(batch, width)
        state = self.attention_norm(own + self.dropout(self.out(mixed)))
        state = self.feed_forward_norm(state + self.dropout(self.feed_forward(state)))
        return state, attention.mean(dim=-1)


class ReferenceMerge(nn.Module):
    """The reference MTM: per-token `q.k` scores, softmax over tokens, sum of values."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(fused state [B, d], token weights [B, n])` from tokens `[B, n, d]`."""
        scores = (self.query(tokens) * self.key(tokens)).sum(-1) / math.sqrt(tokens.shape[-1])
        weights = torch.softmax(scores, dim=1)
        return (weights.unsqueeze(-1) * self.value(tokens)).sum(1), weights


class TaskFusion(nn.Module):
    """emm-ray's AKF for one task at one level.

    `own` are the indices of the task's components in the level's token list,
    `candidates` those of the other tasks' components.
    """

    def __init__(
        self,
        context_width: int,
        own: Sequence[int],
        candidates: Sequence[int],
        config: FusionConfig,
    ) -> None:
        super().__init__()
        self.register_buffer(
            "own_index", torch.tensor(list(own), dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "candidate_index", torch.tensor(list(candidates), dtype=torch.long), persistent=False
        )
        self.task_gate = TaskGate(context_width, len(own))
        self.fusion_gate = (
            TopKFusionGate(context_width, len(candidates), config.top_k)
            if candidates and config.top_k
            else None
        )
        self.merge = MultiTaskMerge(
            config.d_model, config.heads, config.ffn_multiplier, config.dropout
        )

    def mix(self, context: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Task-gate mixture `u_t [B, d]` and its weights over the own components."""
        return self.task_gate(context, tokens.index_select(1, self.own_index))

    def fuse(
        self,
        context: torch.Tensor,
        mixture: torch.Tensor,
        tokens: torch.Tensor,
        mixtures: torch.Tensor | None,
        trace: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """`(h_t, fusion weights [B, C], selected mask [B, C], attention [B, 1 + C])`.

        Attention is the merge's weight on the own mixture (column 0) and on each
        candidate (0 where not selected). Without a cross-task path, or without `trace`
        (the report's per-candidate tensors cost ops a forward does not need): `None`s.
        """
        if self.fusion_gate is None:
            state, _ = self.merge(mixture, mixture.new_zeros(mixture.shape[0], 0, mixture.shape[1]))
            return state, None, None, None
        selected, log_weights, index = self.fusion_gate(
            context, tokens.index_select(1, self.candidate_index)
        )
        state, attention = self.merge(mixture, selected, log_weights)
        if not trace:
            return state, None, None, None
        dense = torch.zeros(
            mixture.shape[0], len(self.candidate_index), device=mixture.device, dtype=mixture.dtype
        )
        weights = dense.scatter(1, index, log_weights.exp())
        attended = torch.cat([attention[:, :1], dense.scatter(1, index, attention[:, 1:])], dim=1)
        return state, weights, dense.bool().scatter(1, index, True), attended


class ReferenceTaskFusion(nn.Module):
    """The reference AKF for one task at one level; `candidates` are other tasks' indices."""

    def __init__(
        self,
        context_width: int,
        own: Sequence[int],
        candidates: Sequence[int],
        config: FusionConfig,
    ) -> None:
        super().__init__()
        self.register_buffer(
            "own_index", torch.tensor(list(own), dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "candidate_index", torch.tensor(list(candidates), dtype=torch.long), persistent=False
        )
        self.task_gate = TaskGate(context_width, len(own))
        self.fusion_scores = (
            nn.Linear(context_width, len(candidates)) if candidates and config.top_k else None
        )
        self.merge = ReferenceMerge(config.d_model)

    def mix(self, context: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task_gate(context, tokens.index_select(1, self.own_index))

    def fuse(
        self,
        context: torch.Tensor,
        mixture: torch.Tensor,
        tokens: torch.Tensor,
        mixtures: torch.Tensor | None,
        trace: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Hard-argmax choice of one other task's mixture, then the reference merge
        (returns as `TaskFusion.fuse`, candidates being tasks)."""
        if self.fusion_scores is None:
            state, _ = self.merge(mixture.unsqueeze(1))
            return state, None, None, None
        if mixtures is None:
            raise ValueError("the reference fusion chooses among the tasks' mixtures: pass them")
        probabilities = torch.softmax(self.fusion_scores(context), dim=-1)
        choice = probabilities.argmax(dim=-1)
        candidates = mixtures.index_select(1, self.candidate_index)
        chosen = candidates[torch.arange(len(choice), device=choice.device), choice]
        state, attention = self.merge(torch.stack([mixture, chosen], dim=1))
        if not trace:
            return state, None, None, None
        selected = F.one_hot(choice, len(self.candidate_index)).bool()
        attended = torch.cat([attention[:, :1], selected * attention[:, 1:]], dim=1)
        return state, probabilities, selected, attended


def task_fusion(
    config: FusionConfig, context_width: int, own: Sequence[int], candidates: Sequence[int]
) -> TaskFusion | ReferenceTaskFusion:
    """The AKF module of `config.variant` for one task at one level."""
    kind = ReferenceTaskFusion if config.variant == "reference" else TaskFusion
    return kind(context_width, own, candidates, config)
