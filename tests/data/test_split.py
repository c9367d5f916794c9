"""Stratified split with many tasks: tiny strata, exact shares of full blocks, chunking."""

from __future__ import annotations

import numpy as np

from emm_ray.data.split import BLOCK_ROWS, SPLITS, StratifiedSplitter, strata

FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
RATES = [0.06, 0.43, 0.15, 0.35, 0.13, 0.11, 0.2]  # the seven census tasks


def _labels(rows: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((rows, len(RATES))) < RATES).astype(np.int8)


def test_strata_are_the_joint_label_of_seven_tasks() -> None:
    labels = np.array([[0] * 7, [1] * 7, [1, 0, 0, 0, 0, 0, 1]], dtype=np.int8)
    assert strata(labels).tolist() == [0, 127, 65]


def test_tiny_strata_are_assigned_and_full_blocks_are_exact() -> None:
    row_strata = strata(_labels(30_000))
    present, sizes = np.unique(row_strata, return_counts=True)
    assert sizes.min() <= 2 and len(present) > 64  # many strata, some of a row or two
    whole = StratifiedSplitter(FRACTIONS, seed=3).assign(row_strata)
    splitter = StratifiedSplitter(FRACTIONS, seed=3)
    chunked = np.concatenate(
        [splitter.assign(row_strata[i : i + 777]) for i in range(0, len(row_strata), 777)]
    )
    assert np.array_equal(whole, chunked)
    shares = np.bincount(whole, minlength=len(SPLITS)) / len(whole)
    assert np.allclose(shares, [FRACTIONS[s] for s in SPLITS], atol=0.01)
    for stratum in present[sizes >= BLOCK_ROWS]:
        first_block = whole[row_strata == stratum][:BLOCK_ROWS]
        assert np.bincount(first_block, minlength=3).tolist() == [800, 100, 100]
