"""Every emm-ray artifact directory is also an MLflow Model (`MLmodel` beside the weights).

So a registered version loads with MLflow's own API,
`mlflow.pyfunc.load_model("models:/<name>@champion").predict(df)`, as well as with
emm-ray's loaders and Serve. The `python_function` flavor names a loader module
(`emm_ray.serve.pyfunc`) instead of a pickled Python object: nothing is unpickled,
weights still load with `weights_only` after their checksum is verified. The signature
(one string column per categorical feature, one double per numeric feature; one double
per task out) and the input example come from the feature schema.

MLflow's input-example writer is private (`mlflow.models.utils._save_example`); the
MLflow pin (`<3.18`) keeps it stable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.models.utils import _save_example
from mlflow.types import ColSpec, Schema

from emm_ray.data.schema import FeatureSchema

MLMODEL_FILE = "MLmodel"
LOADER_MODULE = "emm_ray.serve.pyfunc"
EXAMPLE_ROWS = 2


def write_mlflow_model(directory: Path, schema: FeatureSchema, tasks: Sequence[str]) -> None:
    """Write `MLmodel` (pyfunc flavor, signature) and an input example into `directory`."""
    model = Model(signature=model_signature(schema, tasks))
    mlflow.pyfunc.add_to_model(model, loader_module=LOADER_MODULE)
    _save_example(model, input_example(schema), str(directory))
    model.save(str(directory / MLMODEL_FILE))


def model_signature(schema: FeatureSchema, tasks: Sequence[str]) -> ModelSignature:
    inputs = [ColSpec("string", f.name) for f in schema.sparse]
    inputs += [ColSpec("double", f.name) for f in schema.dense]
    return ModelSignature(
        inputs=Schema(inputs), outputs=Schema([ColSpec("double", task) for task in tasks])
    )


def input_example(schema: FeatureSchema) -> pd.DataFrame:
    """Rows of the schema's first known categories and the raw values at its training
    means (the mean is of the transformed value: `log1p` fields are mapped back)."""
    columns: dict[str, list[object]] = {}
    for field in schema.sparse:
        known = list(field.vocabulary[:EXAMPLE_ROWS]) or ["unknown"]
        columns[field.name] = [known[row % len(known)] for row in range(EXAMPLE_ROWS)]
    for field in schema.dense:
        raw = math.expm1(field.mean) if field.transform == "log1p" else field.mean
        columns[field.name] = [float(raw)] * EXAMPLE_ROWS
    return pd.DataFrame(columns)
