"""Put a logged model artifact into the MLflow Model Registry, with its metrics.

A registered version points at a run's artifact directory (weights, manifest, schema),
so `models:/<name>/<version>` or `models:/<name>@<alias>` is all serving needs.
Metrics travel as version tags (searchable, shown in the MLflow UI) and in the
description, so the registry alone says why this version was chosen.

A registered model holds models of one schema (one dataset, one encoding): the first
version binds the name to its artifact's schema hash (a registered-model tag), and a
version of another schema is refused before anything is written, so an alias such as
`@champion` can never move to a model that reads other data.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from emm_ray.errors import ConfigError
from emm_ray.tracking.store import tag

METRIC_TAG = "metric."
SCHEMA_TAG = tag("schema_hash")
DATASET_TAG = tag("dataset")


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
    """Register `runs:/<run_id>/<artifact_path>` as a new version of `name` (created if
    new); refused when `name` already holds models of another schema."""
    schema_hash, dataset = artifact_schema(client, run_id, artifact_path)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        model = client.create_registered_model(
            name, tags={SCHEMA_TAG: schema_hash, DATASET_TAG: dataset}
        )
    bound = model.tags.get(SCHEMA_TAG) or _schema_of_versions(client, name)
    if bound is not None and bound != schema_hash:
        raise ConfigError(
            f"registered model {name!r} holds models of schema {bound} (dataset "
            f"{model.tags.get(DATASET_TAG, '?')!r}); run {run_id}'s model reads schema "
            f"{schema_hash} (dataset {dataset!r}): register it under another model_name"
        )
    if SCHEMA_TAG not in model.tags:
        client.set_registered_model_tag(name, SCHEMA_TAG, schema_hash)
        client.set_registered_model_tag(name, DATASET_TAG, dataset)
    metrics = dict(metrics or {})
    all_tags = {
        **{METRIC_TAG + k: repr(float(v)) for k, v in metrics.items()},
        SCHEMA_TAG: schema_hash,
        DATASET_TAG: dataset,
        **(tags or {}),
    }
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


def artifact_schema(client: MlflowClient, run_id: str, artifact_path: str) -> tuple[str, str]:
    """(schema hash, dataset) of a logged model artifact, read from its own files."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            manifest = client.download_artifacts(run_id, f"{artifact_path}/manifest.json", scratch)
            schema = client.download_artifacts(run_id, f"{artifact_path}/schema.json", scratch)
        except (MlflowException, OSError) as exc:
            raise ConfigError(
                f"run {run_id}: {artifact_path}/ is not a model artifact (no manifest.json and "
                f"schema.json): {exc}"
            ) from None
        schema_hash = json.loads(Path(manifest).read_text())["schema_hash"]
        dataset = json.loads(Path(schema).read_text())["dataset"]
    return str(schema_hash), str(dataset)


def _schema_of_versions(client: MlflowClient, name: str) -> str | None:
    """The schema of a model registered before names were bound (its newest version's)."""
    versions = client.search_model_versions(f"name = '{name}'")
    for version in sorted(versions, key=lambda v: -int(v.version)):
        if SCHEMA_TAG in version.tags:
            return version.tags[SCHEMA_TAG]
        if version.run_id:
            return artifact_schema(client, version.run_id, _artifact_path(version.source))[0]
    return None


def _artifact_path(source: str) -> str:
    """`runs:/<run>/<path>` -> `<path>`."""
    return source.removeprefix("runs:/").split("/", 1)[1]
