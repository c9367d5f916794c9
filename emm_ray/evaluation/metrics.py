"""Per-task test metrics of any multi-task or single-task module.

AUC is scikit-learn's; log loss is binary cross-entropy on the logits in float64. A task
whose labels in the scored data have one class only has no AUC: it is reported as
`None` (and `n/a` in the table) rather than failing the whole evaluation, since a small
foreign test file can legitimately lack positives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from emm_ray.data.batch import Batch
from emm_ray.errors import EmmError
from emm_ray.evaluation.report import ModelKind, ReportRow
from emm_ray.train.collect import RowCollector
from emm_ray.train.loop import inference_batch_size


@torch.inference_mode()
def predict(module: nn.Module, data: Batch, batch_size: int | None = None) -> torch.Tensor:
    """Logits `[N, T]` (float32, CPU) of `module` on `data`, in eval mode, in chunks
    (`batch_size` rows; `None`: the device's default, `inference_batch_size`)."""
    device = next(iter(module.parameters())).device
    batch_size = inference_batch_size(device, batch_size)
    was_training = module.training
    module.eval()
    logits = RowCollector()  # not a list of chunks: that fragments the heap (collect.py)
    try:
        for start in range(0, len(data), batch_size):
            part = data.slice(slice(start, start + batch_size)).to(device)
            logits.append(module(part.sparse, part.dense).float().reshape(len(part), -1))
    finally:
        module.train(was_training)
    return logits.result()


def auc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or `None` when the labels have a single class."""
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else None


def score(
    model: str,
    kind: ModelKind,
    logits: torch.Tensor,
    labels: torch.Tensor,
    task_names: Sequence[str],
) -> list[ReportRow]:
    """One report row per task from logits `[N, T]` and matching labels `[N, T]`."""
    if logits.shape != labels.shape or logits.shape[1] != len(task_names):
        raise EmmError(
            f"model {model!r}: logits {list(logits.shape)} and labels {list(labels.shape)} "
            f"do not match tasks {list(task_names)}"
        )
    rows = []
    for column, task in enumerate(task_names):
        y, z = labels[:, column].double(), logits[:, column].double()
        rows.append(
            ReportRow(
                model=model,
                kind=kind,
                task=task,
                auc=auc_or_none(y.numpy(), z.numpy()),
                logloss=float(F.binary_cross_entropy_with_logits(z, y)),
                rows=len(y),
            )
        )
    return rows


def score_module(
    model: str,
    kind: ModelKind,
    module: nn.Module,
    data: Batch,
    task_indices: Sequence[int],
    task_names: Sequence[str],
    batch_size: int | None = None,
) -> list[ReportRow]:
    """Predict on `data` and score the columns `task_indices` (schema order) of its labels."""
    logits = predict(module, data, batch_size)
    return score(model, kind, logits, data.labels[:, list(task_indices)], task_names)
