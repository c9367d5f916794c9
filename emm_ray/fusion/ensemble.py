"""The pool's ensemble: where a `pool_residual` fused model's prediction starts.

A task's ensemble combines the logits of the task's own (founding) pool members, or with
`ensemble_inputs: pool` of every founding member of the pool; the fused model's tower
adds a learned correction to it. `mean` is their plain mean.
`stacked` fits, once before fusion training, a logistic regression on those logits over
the validation rows (a weight per member and a bias, float64 L-BFGS, started at the
mean), so a weak member no longer drags the start below the strong one
(measured in docs/ARCHITECTURE.md).
Held-out rows, as stacked generalisation requires: members are over-confident on the
rows they were trained on, and the fit would favour whichever overfits most. It fits
k + 1 numbers per task, so the validation AUC that early stopping reads afterwards stays
honest to within noise. With a single member it is Platt scaling: same ranking, better
calibrated.

The weights are buffers, not parameters: saved with the model, never moved by gradient
descent, and refitted only while `fitted` is false, so members plugged in later (and
their training) leave an existing task's ensemble as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emm_ray.errors import DataError

STACKING_L2 = 1e-4  # keeps the fit well posed when two members' logits are collinear
STACKING_MAX_ITERATIONS = 100


class TaskEnsemble(nn.Module):
    """`[B, k]` member logits -> `[B]` ensemble logit: `logits @ weight + bias`.

    `correction_enabled` says whether the fused model's correction applies on top of this
    ensemble for the task (`EMMModel.finish_training` switches it off where it hurts).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    fitted: torch.Tensor
    correction_enabled: torch.Tensor

    def __init__(self, members: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.full((members,), 1.0 / members))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("correction_enabled", torch.ones((), dtype=torch.bool))

    def forward(self, member_logits: torch.Tensor) -> torch.Tensor:
        return member_logits @ self.weight.to(member_logits.dtype) + self.bias

    def fit(self, member_logits: torch.Tensor, labels: torch.Tensor, task: str) -> None:
        """Logistic regression of `labels [N]` on `member_logits [N, k]`; marks it fitted."""
        if labels.numel() == 0 or bool((labels == labels[0]).all()):
            raise DataError(
                f"cannot fit the pool ensemble of task {task!r}: the labels it is fitted on "
                f"({labels.numel()} validation rows) do not hold both classes"
            )
        x, y = member_logits.detach().double(), labels.detach().double()
        weight = self.weight.detach().double().clone().requires_grad_(True)
        bias = self.bias.detach().double().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [weight, bias], max_iter=STACKING_MAX_ITERATIONS, line_search_fn="strong_wolfe"
        )

        def loss() -> torch.Tensor:
            optimizer.zero_grad()
            value = F.binary_cross_entropy_with_logits(x @ weight + bias, y)
            value = value + STACKING_L2 * weight.square().sum()
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(loss)
        if not (torch.isfinite(weight).all() and torch.isfinite(bias)):
            raise DataError(f"the pool ensemble of task {task!r} did not converge")
        self.weight.copy_(weight.detach())
        self.bias.copy_(bias.detach())
        self.fitted.fill_(True)


class PoolEnsemble(nn.Module):
    """Every task's ensemble over its inputs' logits: `[B, k_t]` per task -> `[B, T]`."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks = nn.ModuleList()

    def add_task(self, members: int) -> None:
        self.tasks.append(TaskEnsemble(members))

    def forward(self, member_logits: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(
            [ensemble(logits) for ensemble, logits in zip(self.tasks, member_logits, strict=True)],
            dim=1,
        )

    def correction_mask(self) -> torch.Tensor:
        """`[T]` bool: where the correction applies on top of the ensemble."""
        return torch.stack([ensemble.correction_enabled for ensemble in self.tasks])

    def unfitted(self) -> list[int]:
        """Tasks whose stacking was not fitted yet."""
        return [t for t, ensemble in enumerate(self.tasks) if not bool(ensemble.fitted)]

    def fit(
        self,
        tasks: list[int],
        member_logits: dict[int, torch.Tensor],
        labels: dict[int, torch.Tensor],
        names: list[str],
    ) -> None:
        """Fit the stacking of `tasks` (`member_logits[t] [N, k_t]`, `labels[t] [N]`)."""
        for task in tasks:
            self.tasks[task].fit(member_logits[task], labels[task], names[task])
