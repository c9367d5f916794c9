"""Deterministic, stratified, streaming train/validation/test assignment.

Rows are stratified on the joint label (every combination of task labels is a
stratum). Within a stratum, rows are numbered in arrival order and cut into blocks of
`BLOCK_ROWS`; each block's slots are shuffled with a seed derived from
`(seed, stratum, block)` and a fixed share of the slots goes to each split. So:
every split gets its fraction of every label combination (exactly, up to one partial
block per stratum), the result does not depend on how the rows were chunked, and it
needs no second look at the data — it streams with memory independent of the rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np

SPLITS: tuple[str, ...] = ("train", "validation", "test")
BLOCK_ROWS = 1000


def strata(labels: np.ndarray) -> np.ndarray:
    """Joint-label stratum of each row: labels `[N, T]` in {0, 1} -> `sum_t label_t * 2**t`."""
    weights = 1 << np.arange(labels.shape[1], dtype=np.int64)
    return labels.astype(np.int64) @ weights


def slot_counts(fractions: Mapping[str, float], block: int = BLOCK_ROWS) -> dict[str, int]:
    """Slots per split in one block (largest remainder), summing to `block`."""
    exact = {s: fractions.get(s, 0.0) * block for s in SPLITS}
    counts = {s: int(np.floor(v)) for s, v in exact.items()}
    by_remainder = sorted(SPLITS, key=lambda s: exact[s] - counts[s], reverse=True)
    for s in by_remainder[: block - sum(counts.values())]:
        counts[s] += 1
    return counts


class StratifiedSplitter:
    """Assigns each arriving row a split code (index into `SPLITS`); one instance per pass."""

    def __init__(self, fractions: Mapping[str, float], seed: int) -> None:
        unknown = set(fractions) - set(SPLITS)
        if unknown or abs(sum(fractions.values()) - 1.0) > 1e-9:
            raise ValueError(f"fractions must cover {SPLITS} and sum to 1, got {dict(fractions)}")
        self.fractions = dict(fractions)
        self.seed = seed
        counts = slot_counts(fractions)
        self._slot_split = np.repeat(
            np.arange(len(SPLITS), dtype=np.int8), [counts[s] for s in SPLITS]
        )
        self._seen: dict[int, int] = defaultdict(int)

    def assign(self, row_strata: np.ndarray) -> np.ndarray:
        codes = np.empty(len(row_strata), dtype=np.int8)
        for stratum in np.unique(row_strata):
            rows = np.flatnonzero(row_strata == stratum)
            rank = self._seen[int(stratum)] + np.arange(len(rows))
            self._seen[int(stratum)] += len(rows)
            blocks, position = np.divmod(rank, BLOCK_ROWS)
            for block in np.unique(blocks):
                here = blocks == block
                key = np.random.SeedSequence(self.seed, spawn_key=(int(stratum), int(block)))
                slots = np.random.default_rng(key).permutation(BLOCK_ROWS)
                codes[rows[here]] = self._slot_split[slots[position[here]]]
        return codes


class FixedSplit:
    """Every row of a source goes to one split (e.g. a given validation file)."""

    def __init__(self, split: str) -> None:
        self.fractions = {split: 1.0}
        self._code = np.int8(SPLITS.index(split))

    def assign(self, row_strata: np.ndarray) -> np.ndarray:
        return np.full(len(row_strata), self._code, dtype=np.int8)
