"""A real HTTP round trip against the deployed model, checked against the model itself.

Test rows are stored encoded, so they are decoded back to raw values (category strings,
unscaled numbers) exactly as a client would send them; the served probabilities must
then match the registered model's own predictions on the encoded rows.
"""

from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch

from emm_ray.data.batch import Batch
from emm_ray.data.schema import OOV_INDEX, FeatureSchema
from emm_ray.serve.servable import Servable

UNSEEN_CATEGORY = "<unseen>"


def decode_records(schema: FeatureSchema, batch: Batch) -> list[dict[str, str | float]]:
    """Encoded rows -> raw records (the OOV index becomes a category never seen in training)."""
    records: list[dict[str, str | float]] = [{} for _ in range(len(batch))]
    for column, field in enumerate(schema.sparse):
        for row, index in enumerate(batch.sparse[:, column].tolist()):
            value = UNSEEN_CATEGORY if index == OOV_INDEX else field.vocabulary[index - 1]
            records[row][field.name] = value
    for column, field in enumerate(schema.dense):
        scaled = batch.dense[:, column].double().numpy() * field.std + field.mean
        values = np.expm1(scaled) if field.transform == "log1p" else scaled
        for row, value in enumerate(values.tolist()):
            records[row][field.name] = float(value)
    return records


@dataclass(frozen=True)
class ServingCheck:
    records: int
    max_abs_difference: float


def check_deployment(url: str, servable: Servable, batch: Batch) -> ServingCheck:
    """POST the rows to `url/predict` and compare with `servable`'s own probabilities."""
    records = decode_records(servable.schema, batch)
    request = urllib.request.Request(
        f"{url}/predict",
        data=json.dumps({"records": records}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    served = np.array([[p[t] for t in servable.tasks] for p in answer["predictions"]])
    with torch.inference_mode():
        own = servable.predict_proba(batch.sparse.numpy(), batch.dense.numpy())
    difference = float(np.abs(served - own).max()) if len(records) else math.nan
    return ServingCheck(records=len(records), max_abs_difference=difference)
