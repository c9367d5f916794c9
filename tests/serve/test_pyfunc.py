"""Registered versions are MLflow Models: `mlflow.pyfunc.load_model(...).predict(df)`."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from emm_ray.errors import ArtifactIntegrityError, DataError
from emm_ray.tracking.artifacts import STATE_FILE
from tests.serve.models import (
    SCHEMA,
    RegisteredModel,
    expected_probabilities,
    raw_rows,
    register_member_version,
    register_tiny_models,
)


def as_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Records as the signature types them: categories as strings, numbers as floats."""
    sparse = {f.name for f in SCHEMA.sparse}
    return pd.DataFrame(
        [{k: str(v) if k in sparse else float(v) for k, v in row.items()} for row in rows]
    )


def load(model_uri: str, tracking_uri: str) -> mlflow.pyfunc.PyFuncModel:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return mlflow.pyfunc.load_model(model_uri)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[RegisteredModel, RegisteredModel]:
    return register_tiny_models(tmp_path_factory.mktemp("pyfunc"))


def test_a_registered_model_loads_and_predicts_through_mlflow_pyfunc(
    registered: tuple[RegisteredModel, RegisteredModel],
) -> None:
    """The fused model and a single-task member, by alias: one column per task, the
    model's own probabilities, the caller's index kept."""
    for model in registered:
        pyfunc = load(f"models:/{model.name}@champion", model.tracking_uri)
        rows = raw_rows(SCHEMA, count=5, seed=3)
        frame = as_frame(rows).set_index(pd.Index([10, 11, 12, 13, 14]))
        answer = pyfunc.predict(frame)
        assert list(answer.columns) == list(model.tasks) and list(answer.index) == [
            10,
            11,
            12,
            13,
            14,
        ]
        np.testing.assert_allclose(
            answer.to_numpy(), expected_probabilities(model, rows), atol=1e-6, rtol=0
        )


def test_signature_and_input_example_come_from_the_schema(
    registered: tuple[RegisteredModel, RegisteredModel],
) -> None:
    model = registered[0]
    pyfunc = load(model.uri, model.tracking_uri)
    inputs = {c.name: c.type.name for c in pyfunc.metadata.get_input_schema().inputs}
    assert inputs == {
        **{f.name: "string" for f in SCHEMA.sparse},
        **{f.name: "double" for f in SCHEMA.dense},
    }
    assert [c.name for c in pyfunc.metadata.get_output_schema().inputs] == list(model.tasks)
    example = pyfunc.input_example
    assert isinstance(example, pd.DataFrame) and len(example) > 0
    assert pyfunc.predict(example).shape == (len(example), len(model.tasks))


def test_a_bad_value_is_refused_naming_the_row_and_field(
    registered: tuple[RegisteredModel, RegisteredModel],
) -> None:
    model = registered[0]
    frame = as_frame(raw_rows(SCHEMA, count=3))
    frame.loc[2, "age"] = float("inf")
    with pytest.raises(DataError, match=r"input row 2 \(position 2\): age"):
        load(model.uri, model.tracking_uri).predict(frame)


def test_a_tampered_version_does_not_load_through_pyfunc(tmp_path: Path) -> None:
    """Checksums are verified on the pyfunc path too; weights load with weights_only."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    register_member_version(tmp_path / "bad", tracking_uri, "emm-tampered", tampered=True)
    assert (tmp_path / "bad" / STATE_FILE).exists()
    with pytest.raises(ArtifactIntegrityError, match="checksum"):
        load("models:/emm-tampered@champion", tracking_uri)
