"""A tiny hand-built schema and batch every zoo test runs on (milliseconds per model)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from emm_ray.data.schema import DenseField, FeatureSchema, SparseField, Task

ROWS = 64


@pytest.fixture(scope="session")
def tiny_schema() -> FeatureSchema:
    """Three sparse fields (cardinalities 3, 4, 5 with OOV), two dense, two tasks."""
    return FeatureSchema(
        dataset="tiny",
        sparse=(
            SparseField(name="colour", vocabulary=("red", "blue")),
            SparseField(name="shape", vocabulary=("square", "circle", "star")),
            SparseField(name="size", vocabulary=("xs", "s", "m", "l")),
        ),
        dense=(DenseField(name="age"), DenseField(name="income", transform="log1p")),
        tasks=(Task(name="click"), Task(name="buy")),
    )


@pytest.fixture
def tiny_inputs(tiny_schema: FeatureSchema) -> tuple[torch.Tensor, torch.Tensor]:
    """`ROWS` rows covering every index, OOV (0) included."""
    generator = torch.Generator().manual_seed(0)
    sparse = torch.stack(
        [torch.randint(0, c, (ROWS,), generator=generator) for c in tiny_schema.cardinalities],
        dim=1,
    )
    dense = torch.randn(ROWS, len(tiny_schema.dense), generator=generator)
    return sparse, dense


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP's spin-waits
    can make them 10x slower; restore the setting for the rest of the suite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
