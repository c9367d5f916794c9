"""Load a model from the MLflow Model Registry (`models:/name/3`, `models:/name@champion`).

The registered version's source is a model artifact directory (`emm_ray.tracking.artifacts`:
weights, manifest, schema). It is downloaded, verified (checksum, schema hash,
`weights_only` load) and rebuilt into a module by its manifest's `architecture`: a zoo
architecture is a single-task pool member, `emm` is a fused model, a baseline's name
(`ple`, `mmoe`, ...) an end-to-end multi-task model, served for comparison.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from emm_ray.baselines import BASELINES, build_baseline
from emm_ray.errors import ArtifactIntegrityError, ConfigError
from emm_ray.fusion.artifact import FUSED_ARCHITECTURE, build_fused_model
from emm_ray.models.registry import ARCHITECTURES, build_model
from emm_ray.serve.records import ModelDescription
from emm_ray.serve.servable import Servable
from emm_ray.serve.settings import MODEL_URI, ServeSettings
from emm_ray.tracking.artifacts import ModuleArtifact, load_module_artifact
from emm_ray.tracking.store import tracking_client


def resolve_model_version(
    client: MlflowClient, model_uri: str, pinned_version: str | None = None
) -> ModelVersion:
    """The registry entry `model_uri` names (version `pinned_version` of its model when
    given, whatever its alias says now); `ConfigError` if there is none."""
    match = MODEL_URI.match(model_uri)
    if match is None:
        raise ConfigError(
            f"expected models:/<name>/<version> or models:/<name>@<alias>, got {model_uri!r}"
        )
    try:
        if pinned_version is not None:
            return client.get_model_version(match["name"], pinned_version)
        if match["alias"]:
            return client.get_model_version_by_alias(match["name"], match["alias"])
        return client.get_model_version(match["name"], match["version"])
    except MlflowException as exc:
        raise ConfigError(
            f"{model_uri} is not in the model registry at {client.tracking_uri}: {exc.message}"
        ) from None


def download_model_version(client: MlflowClient, version: ModelVersion, destination: Path) -> Path:
    """Copy the version's artifact directory to `destination` and return its local path."""
    uri = client.get_model_version_download_uri(version.name, version.version)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(destination), tracking_uri=client.tracking_uri
        )
    )


def servable_from_artifact(artifact: ModuleArtifact) -> Servable:
    """Rebuild the artifact's module from its manifest and load its verified weights."""
    manifest = artifact.manifest
    if manifest.architecture in ARCHITECTURES:
        if len(manifest.tasks) != 1:
            raise ArtifactIntegrityError(
                f"{artifact.path}: a {manifest.architecture} model predicts one task, but the "
                f"manifest lists {list(manifest.tasks)}"
            )
        module = build_model(
            manifest.architecture, artifact.schema, manifest.tasks[0], **manifest.hparams
        )
    elif manifest.architecture == FUSED_ARCHITECTURE:
        module = build_fused_model(manifest, artifact.schema)
    elif manifest.architecture in BASELINES:
        module = build_baseline(
            manifest.architecture, artifact.schema, manifest.tasks, **manifest.hparams
        )
    else:
        raise ArtifactIntegrityError(
            f"{artifact.path}: cannot serve architecture {manifest.architecture!r} "
            f"(servable: {FUSED_ARCHITECTURE}, {', '.join(sorted(ARCHITECTURES | BASELINES))})"
        )
    try:
        module.load_state_dict(artifact.state_dict, strict=True)
    except RuntimeError as exc:
        raise ArtifactIntegrityError(
            f"{artifact.path}: weights do not fit the {manifest.architecture} model its "
            f"manifest describes: {exc}"
        ) from exc
    return Servable(artifact.schema, module, tuple(manifest.tasks), manifest.kind)


def load_registered(
    model_uri: str, tracking_uri: str | None = None, pinned_version: str | None = None
) -> tuple[Servable, ModelDescription]:
    """The servable behind `model_uri` (or its model's `pinned_version`), and a
    description of the version for responses."""
    client = tracking_client(tracking_uri)
    version = resolve_model_version(client, model_uri, pinned_version)
    with tempfile.TemporaryDirectory(prefix="emm-serve-") as tmp:
        artifact = load_module_artifact(download_model_version(client, version, Path(tmp)))
        servable = servable_from_artifact(artifact)
    match = MODEL_URI.match(model_uri)
    description = ModelDescription(
        name=version.name,
        version=str(version.version),
        alias=match["alias"] if match else None,
        run_id=version.run_id,
        kind=servable.kind,
        schema_hash=servable.schema.hash,
        tasks=list(servable.tasks),
    )
    return servable, description


def pin_version(settings: ServeSettings) -> ServeSettings:
    """`settings` with the version `model_uri` names now pinned, after loading it here.

    Called where an application is built (`build_app`, `deploy`), before Serve touches
    the running one: a version that does not load (tampered weights, wrong manifest,
    missing artifact) raises here and never replaces the version being served, and every
    replica, including one Serve restarts after a crash, loads the same verified version.
    """
    return load_and_pin(settings)[0]


def load_and_pin(settings: ServeSettings) -> tuple[ServeSettings, Servable, ModelDescription]:
    """`pin_version`, keeping the model it loaded for a caller that scores with it too."""
    servable, description = load_registered(
        settings.model_uri, settings.tracking_uri, settings.pinned_version
    )
    pinned = settings.model_copy(update={"pinned_version": description.version})
    return pinned, servable, description
