"""Put a logged model artifact into the MLflow Model Registry, with its metrics.

A registered version points at a run's artifact directory (weights, manifest, schema),
so `models:/<name>/<version>` or `models:/<name>@<alias>` is all serving needs.
Metrics travel as version tags (searchable, shown in the MLflow UI) and in the
description, so the registry alone says why this version was chosen.

A registered model holds models of one data layout (one dataset, its fields and tasks:
`FeatureSchema.layout_hash`): the first version binds the name to its artifact's layout
(registered-model tags), and a version of another layout is refused before anything is
written, so an alias such as `@champion` can never move to a model of other data. A
re-prepared dataset (refreshed vocabularies, other rows) keeps its layout: its models
are new versions of the same name, each carrying its own schema.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from emm_ray.data.schema import SCHEMA_FILE, FeatureSchema
from emm_ray.errors import ConfigError
from emm_ray.tracking.store import tag

METRIC_TAG = "metric."
LAYOUT_TAG = tag("layout")
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
    new); refused when `name` already holds models of another data layout."""
    layout, dataset = artifact_layout(client, run_id, artifact_path)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        tags_of_name = {LAYOUT_TAG: layout, DATASET_TAG: dataset}
        model = client.create_registered_model(name, tags=tags_of_name)
    bound = model.tags.get(LAYOUT_TAG) or _layout_of_versions(client, name)
    if bound is not None and bound != layout:
        raise ConfigError(
            f"registered model {name!r} holds models of dataset "
            f"{model.tags.get(DATASET_TAG, '?')!r} (layout {bound}: fields and tasks); run "
            f"{run_id}'s model is for dataset {dataset!r} (layout {layout}): register it "
            "under another model_name"
        )
    if LAYOUT_TAG not in model.tags:
        client.set_registered_model_tag(name, LAYOUT_TAG, layout)
        client.set_registered_model_tag(name, DATASET_TAG, dataset)
    metrics = dict(metrics or {})
    all_tags = {
        **{METRIC_TAG + k: repr(float(v)) for k, v in metrics.items()},
        LAYOUT_TAG: layout,
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


def artifact_layout(client: MlflowClient, run_id: str, artifact_path: str) -> tuple[str, str]:
    """(layout hash, dataset) of a logged model artifact, read from its own schema."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run_id, f"{artifact_path}/{SCHEMA_FILE}", scratch)
            schema = FeatureSchema.load(path)
        except (MlflowException, OSError, ValueError) as exc:
            raise ConfigError(
                f"run {run_id}: {artifact_path}/ is not a model artifact (no readable "
                f"{SCHEMA_FILE}): {exc}"
            ) from None
    return schema.layout_hash, schema.dataset


def _layout_of_versions(client: MlflowClient, name: str) -> str | None:
    """The layout of a model registered before names were bound (its newest version's)."""
    versions = client.search_model_versions(f"name = '{name}'")
    for version in sorted(versions, key=lambda v: -int(v.version)):
        if LAYOUT_TAG in version.tags:
            return version.tags[LAYOUT_TAG]
        if version.run_id and version.source.startswith("runs:/"):
            path = version.source.removeprefix("runs:/").split("/", 1)[1]
            return artifact_layout(client, version.run_id, path)[0]
    return None
