"""Registered models of every servable kind load back into what they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from emm_ray.data.batch import BatchCollator
from emm_ray.serve.loading import load_registered
from tests.serve.models import SCHEMA, raw_rows, register_tiny_baseline

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name", ["ple", "mmoe", "esmm"])
def test_a_registered_baseline_serves_its_own_probabilities(tmp_path: Path, name: str) -> None:
    registered = register_tiny_baseline(tmp_path, name)
    servable, description = load_registered(registered.uri, registered.tracking_uri)
    assert (description.kind, servable.tasks) == ("baseline", registered.tasks)
    encoded = SCHEMA.encode(pa.Table.from_pylist(_labelled(raw_rows(SCHEMA, 32))))
    batch = BatchCollator(SCHEMA)({n: encoded.column(n).to_numpy() for n in encoded.column_names})
    served = servable.predict_proba(batch.sparse.numpy(), batch.dense.numpy())
    with torch.inference_mode():
        expected = torch.sigmoid(registered.module(batch.sparse, batch.dense).double()).numpy()
    assert served.shape == (32, len(registered.tasks))
    np.testing.assert_allclose(served, expected, atol=1e-6)


def _labelled(rows: list[dict]) -> list[dict]:
    """Rows as the schema encodes a table: categoricals as text, and label columns."""
    sparse = {field.name for field in SCHEMA.sparse}
    return [
        {k: str(v) if k in sparse else v for k, v in row.items()}
        | {task: 0 for task in SCHEMA.task_names}
        for row in rows
    ]
