"""The serving encoder equals the schema's own `encode` on any record a client can send."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emm_ray.data.batch import BatchCollator
from emm_ray.data.schema import DenseField, FeatureSchema, SparseField, Task
from emm_ray.serve.records import RecordEncoder, request_model
from tests.serve.models import SCHEMA

ONE_OF_EACH = FeatureSchema(
    dataset="one-of-each",
    sparse=(SparseField(name="city", vocabulary=("7", "Paris", "7 ")),),
    dense=(DenseField(name="amount", transform="log1p", mean=0.3, std=1.7),),
    tasks=(Task(name="click"),),
)
NO_DENSE = FeatureSchema(
    dataset="no-dense",
    sparse=(SparseField(name="a", vocabulary=("x", "y")), SparseField(name="b", vocabulary=())),
    dense=(),
    tasks=(Task(name="click"),),
)


def _records(schema: FeatureSchema) -> st.SearchStrategy[list[dict[str, Any]]]:
    category = st.one_of(
        *(st.sampled_from(f.vocabulary) for f in schema.sparse if f.vocabulary),
        st.text(max_size=6),
        st.integers(-10, 10**6),
    )
    number = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(-(10**9), 10**9)
    )
    record = st.fixed_dictionaries(
        {f.name: category for f in schema.sparse} | {f.name: number for f in schema.dense}
    )
    return st.lists(record, min_size=1, max_size=20)


def _reference(schema: FeatureSchema, records: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """What training's path makes of the same validated values: a table through `encode`."""
    table = pa.table(
        {
            **{
                f.name: pa.array([getattr(r, f"s{i}") for r in records], pa.string())
                for i, f in enumerate(schema.sparse)
            },
            **{
                f.name: pa.array([float(getattr(r, f"d{i}")) for r in records], pa.float64())
                for i, f in enumerate(schema.dense)
            },
            **{t: pa.array(np.zeros(len(records), np.int8)) for t in schema.task_names},
        }
    )
    encoded = schema.encode(table)
    batch = BatchCollator(schema)({n: encoded.column(n).to_numpy() for n in encoded.column_names})
    return batch.sparse.numpy(), batch.dense.numpy()


@pytest.mark.parametrize("schema", [SCHEMA, ONE_OF_EACH, NO_DENSE], ids=lambda s: s.dataset)
def test_encoder_equals_the_schemas_encode(schema: FeatureSchema) -> None:
    request = request_model(schema, max_records=64)
    encoder = RecordEncoder(schema)

    @settings(max_examples=150, deadline=None)
    @given(_records(schema))
    def check(rows: list[dict[str, Any]]) -> None:
        records = request.model_validate({"records": rows}).records
        encoded = encoder(records)
        sparse, dense = _reference(schema, records)
        np.testing.assert_array_equal(encoded.sparse, sparse)
        np.testing.assert_array_equal(encoded.dense, dense)
        assert encoded.dense.dtype == np.float32 and encoded.sparse.dtype == np.int64

    check()
