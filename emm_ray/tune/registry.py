"""Put a logged model artifact into the MLflow Model Registry, with its metrics.

A registered version points at a run's artifact directory (weights, manifest, schema),
so `models:/<name>/<version>` or `models:/<name>@<alias>` is all serving needs.
Metrics travel as version tags (searchable, shown in the MLflow UI) and in the
description, so the registry alone says why this version was chosen.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

METRIC_TAG = "metric."


def register_artifact(
    client: MlflowClient,
    name: str,
    run_id: str,
    artifact_path: str,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    description: str = "",
    alias: str | None = None,
) -> ModelVersion:
    """Register `runs:/<run_id>/<artifact_path>` as a new version of `name` (created if new)."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    metrics = dict(metrics or {})
    all_tags = {**{METRIC_TAG + k: repr(float(v)) for k, v in metrics.items()}, **(tags or {})}
    summary = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/{artifact_path}",
        run_id=run_id,
        tags=all_tags,
        description="; ".join(part for part in (description, summary) if part),
    )
    if alias is not None:
        client.set_registered_model_alias(name, alias, version.version)
    return client.get_model_version(name, version.version)
