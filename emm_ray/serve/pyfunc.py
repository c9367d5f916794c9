"""The loader MLflow calls for emm-ray models: `mlflow.pyfunc.load_model(uri)`.

Each artifact's `MLmodel` (written by `emm_ray.tracking.mlflow_model`) names this
module; MLflow imports it and calls `_load_pyfunc(<artifact directory>)`. Loading is the
verified path Serve uses (manifest, checksum, `weights_only`), and `predict` validates
and encodes raw records with the request model and `RecordEncoder` of `/predict`, so
both answer the same probabilities for the same records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ValidationError

from emm_ray.errors import DataError
from emm_ray.serve.loading import servable_from_artifact
from emm_ray.serve.records import RecordEncoder, record_model
from emm_ray.serve.servable import Servable
from emm_ray.tracking.artifacts import load_module_artifact


class EmmPyfuncModel:
    """A loaded emm-ray model behind MLflow's `predict(DataFrame) -> DataFrame`."""

    def __init__(self, servable: Servable) -> None:
        self.servable = servable
        self.record = record_model(servable.schema)
        self.encode = RecordEncoder(servable.schema)

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        """One probability column per task, one row per input row (same index)."""
        rows = model_input.to_dict("records")
        records = [
            self._record(i, label, row)
            for i, (label, row) in enumerate(zip(model_input.index, rows, strict=True))
        ]
        encoded = self.encode(records)
        probabilities = self.servable.predict_proba(encoded.sparse, encoded.dense)
        tasks = list(self.servable.tasks)
        return pd.DataFrame(probabilities, columns=tasks, index=model_input.index)

    def _record(self, position: int, label: Any, row: dict[str, Any]) -> BaseModel:
        try:
            return self.record.model_validate(row)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise DataError(
                f"input row {label!r} (position {position}): {problems}", row=position + 1
            ) from None


def _load_pyfunc(path: str) -> EmmPyfuncModel:
    """MLflow's entry point for the `python_function` flavor (`loader_module`)."""
    return EmmPyfuncModel(servable_from_artifact(load_module_artifact(Path(path))))
