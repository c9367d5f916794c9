"""The audit's bookkeeping catches missing, repeated, foreign and invalid rows (no Ray)."""

from __future__ import annotations

import numpy as np
import torch

from emm_ray.data.audit import invalid_rows, summarise_epoch
from emm_ray.data.batch import Batch


def test_summary_counts_missing_repeated_and_foreign_rows() -> None:
    expected = np.array([0, 2, 3, 5])
    worker_a = np.array([[1, 0, 1, 0, 0, 0]])  # rows 0, 2
    worker_b = np.array([[0, 1, 1, 0, 0, 0]])  # row 1 (not in the split), row 2 again
    audit = summarise_epoch(0, [worker_a, worker_b], invalid=0, expected=expected)
    assert (audit.seen_once, audit.missing, audit.repeated, audit.foreign) == (1, 2, 1, 1)
    assert audit.rows_per_worker == (2, 2)
    assert not audit.ok
    clean = summarise_epoch(0, [np.array([[1, 0, 1, 0, 0, 0]]), np.array([[0, 0, 0, 1, 0, 1]])],
                       invalid=0, expected=expected)  # fmt: skip
    assert clean.ok and clean.seen_once == 4


def test_invalid_rows_flags_out_of_vocabulary_range_nan_and_bad_labels() -> None:
    cardinalities = torch.tensor([3, 5])
    batch = Batch(
        sparse=torch.tensor([[0, 4], [3, 0], [1, 1], [2, 2], [-1, 0]]),
        dense=torch.tensor([[0.0], [0.0], [float("nan")], [0.0], [0.0]]),
        labels=torch.tensor([[1.0], [0.0], [0.0], [0.5], [1.0]]),
    )
    assert invalid_rows(batch, cardinalities) == 4  # rows 1 (3 >= 3), 2 (nan), 3 (0.5), 4 (-1)
