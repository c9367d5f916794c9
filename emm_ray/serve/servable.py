"""What a replica serves: a feature schema, a module and the tasks of its output columns.

Any registered artifact that can be rebuilt into `module(sparse, dense) -> logits`
(`[B]` for one task, `[B, T]` for several) is servable: the fused EMM model answers
every task at once, a single-task pool member answers its one task, an end-to-end
baseline (PLE, MMoE, ...) answers the tasks it was trained for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from emm_ray.data.schema import FeatureSchema


@dataclass(frozen=True)
class Servable:
    """A model ready to score encoded rows."""

    schema: FeatureSchema
    module: nn.Module
    tasks: tuple[str, ...]
    kind: str

    def __post_init__(self) -> None:
        self.module.eval()

    @torch.inference_mode()
    def predict_proba(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """Probabilities `[B, len(tasks)]` (float64) for encoded rows."""
        logits = self.module(torch.from_numpy(sparse), torch.from_numpy(dense))
        logits = logits.float().reshape(sparse.shape[0], -1)
        if logits.shape[1] != len(self.tasks):
            raise RuntimeError(
                f"the {self.kind} model returned {logits.shape[1]} columns for tasks {self.tasks}"
            )
        return torch.sigmoid(logits).double().numpy()
