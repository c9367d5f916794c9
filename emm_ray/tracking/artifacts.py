"""Self-describing model artifacts: weights + manifest + schema, verified on load.

An artifact is a directory of three files:

- `state_dict.pt`: the weights, written by `torch.save` and read back with
  `torch.load(weights_only=True)`, so loading never executes pickled code;
- `schema.json`: the feature schema the weights were trained on;
- `manifest.json`: what the weights are (architecture, tasks, hyperparameters), what they
  were trained on (schema hash, data fingerprint), framework versions, metrics, and a
  SHA-256 `parameter_checksum` over the tensors in a canonical order.

The format knows nothing about any particular model: a pool member, a baseline and the
fused EMM model are all saved this way, the fused one listing its pool members'
manifests in `components`, which makes it one artifact that describes its whole lineage.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

import emm_ray
from emm_ray.checksum import parameter_checksum
from emm_ray.config import StrictModel
from emm_ray.data.schema import SCHEMA_FILE, FeatureSchema
from emm_ray.errors import ArtifactIntegrityError
from emm_ray.tracking.mlflow_model import write_mlflow_model

STATE_FILE = "state_dict.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class ArtifactManifest(StrictModel):
    """Everything needed to rebuild, verify and trace a saved module."""

    format_version: int = FORMAT_VERSION
    kind: str
    name: str
    architecture: str
    tasks: tuple[str, ...]
    hparams: dict[str, Any] = {}
    schema_hash: str
    parameter_checksum: str = ""
    data_fingerprint: str | None = None
    versions: dict[str, str] = {}
    metrics: dict[str, float] = {}
    created_at: str = ""
    components: tuple[ArtifactManifest, ...] = ()
    extra: dict[str, Any] = {}


@dataclass(frozen=True)
class ModuleArtifact:
    """A verified artifact: weights on CPU, its manifest and the schema it was trained on."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    manifest: ArtifactManifest
    schema: FeatureSchema


def framework_versions() -> dict[str, str]:
    """Versions that decide whether saved weights load and behave the same."""
    import ray

    return {
        "emm_ray": emm_ray.__version__,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
    }


def save_module_artifact(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    manifest: ArtifactManifest,
    schema: FeatureSchema,
) -> ArtifactManifest:
    """Write the artifact files (weights, schema, manifest, and `MLmodel` so the directory
    is an MLflow Model too); fills in checksum, versions and time; returns the manifest.

    The manifest's `schema_hash` must be `schema`'s: an artifact never describes weights
    trained on one schema with another.
    """
    if manifest.schema_hash != schema.hash:
        raise ArtifactIntegrityError(
            f"manifest of {manifest.name!r} names schema {manifest.schema_hash} but the schema "
            f"given to save with it is {schema.hash}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    final = manifest.model_copy(
        update={
            "parameter_checksum": parameter_checksum(weights),
            "versions": manifest.versions or framework_versions(),
            "created_at": manifest.created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    torch.save(weights, directory / STATE_FILE)
    schema.save(directory)
    (directory / MANIFEST_FILE).write_text(final.model_dump_json(indent=1))
    write_mlflow_model(directory, schema, final.tasks)
    return final


def read_manifest(directory: str | Path) -> ArtifactManifest:
    """The manifest alone (no weights read), e.g. to list what a directory holds."""
    path = Path(directory) / MANIFEST_FILE
    try:
        return ArtifactManifest.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"{path} is missing: not a model artifact") from None
    except (ValidationError, UnicodeDecodeError) as exc:
        raise ArtifactIntegrityError(f"{path} is not a valid manifest: {exc}") from exc


def load_module_artifact(
    directory: str | Path, expected_schema: FeatureSchema | None = None
) -> ModuleArtifact:
    """Read and verify an artifact; raises before any weights are used.

    `ArtifactIntegrityError` when a file is missing, unreadable or does not match the
    manifest (corruption or tampering); `SchemaMismatchError` when the artifact was
    trained on another schema than `expected_schema` (the data's).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    schema_path = directory / SCHEMA_FILE
    try:
        schema = FeatureSchema.load(schema_path)
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"{schema_path} is missing") from None
    except (ValidationError, ValueError) as exc:
        raise ArtifactIntegrityError(f"{schema_path} is not a valid schema: {exc}") from exc
    if schema.hash != manifest.schema_hash:
        raise ArtifactIntegrityError(
            f"{schema_path} has hash {schema.hash} but {directory / MANIFEST_FILE} records "
            f"{manifest.schema_hash}: the artifact was modified after it was saved"
        )
    if expected_schema is not None:
        expected_schema.check_compatible(
            manifest.schema_hash, f"artifact {directory} ({manifest.kind} {manifest.name!r})"
        )
    state_path = directory / STATE_FILE
    try:
        state_dict = torch.load(state_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"{state_path} is missing") from None
    except Exception as exc:  # torch raises several types for a damaged file
        raise ArtifactIntegrityError(f"{state_path} cannot be read as weights: {exc}") from exc
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise ArtifactIntegrityError(f"{state_path} does not hold a state dict of tensors")
    checksum = parameter_checksum(state_dict)
    if checksum != manifest.parameter_checksum:
        raise ArtifactIntegrityError(
            f"{state_path} has parameter checksum {checksum[:16]}... but the manifest records "
            f"{manifest.parameter_checksum[:16]}...: the weights are corrupted or were changed"
        )
    return ModuleArtifact(directory, state_dict, manifest, schema)
