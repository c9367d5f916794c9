"""The fused model as one self-describing artifact (`emm_ray.tracking.artifacts` format).

Manifest: `kind: fused`, `architecture: emm`, `tasks` in the model's column order,
`hparams = {fusion: FusionConfig, members: [names], steps: [[names], ...]}` and
`components`: every pool member's own manifest (architecture, task, hyperparameters,
schema hash, the run it came from, its checksum), in member order. The weights are the
whole EMM state dict, the frozen members' embeddings and blocks included, so the
artifact alone rebuilds and runs the fused model; `steps` records which members joined
together (the first step is the original pool, later ones plug-and-play additions), which
is what rebuilding needs to recreate the plug-ins.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ArtifactIntegrityError
from emm_ray.fusion.config import FusionConfig
from emm_ray.fusion.decompose import PoolMember
from emm_ray.fusion.model import EMMModel
from emm_ray.models.registry import build_model
from emm_ray.tracking.artifacts import ArtifactManifest, load_module_artifact, save_module_artifact

FUSED_KIND = "fused"
FUSED_ARCHITECTURE = "emm"


def fused_manifest(
    model: EMMModel,
    name: str,
    *,
    metrics: Mapping[str, float] | None = None,
    data_fingerprint: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ArtifactManifest:
    """Describe `model`: its fusion options, members, plug-in steps and members' manifests."""
    return ArtifactManifest(
        kind=FUSED_KIND,
        name=name,
        architecture=FUSED_ARCHITECTURE,
        tasks=tuple(model.task_names),
        hparams={
            "fusion": model.config.model_dump(mode="json"),
            "members": model.member_names,
            "steps": model.steps,
        },
        schema_hash=model.schema.hash,
        data_fingerprint=data_fingerprint,
        metrics=dict(metrics or {}),
        components=tuple(
            ArtifactManifest.model_validate(model.manifests[n]) for n in model.member_names
        ),
        extra={
            "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
            "total_parameters": sum(p.numel() for p in model.parameters()),
            **dict(extra or {}),
        },
    )


def save_fused_model(
    model: EMMModel, directory: str | Path, name: str, **manifest_fields: Any
) -> ArtifactManifest:
    """Write the fused model's artifact (weights, manifest, schema) into `directory`."""
    manifest = fused_manifest(model, name, **manifest_fields)
    return save_module_artifact(directory, model.state_dict(), manifest, model.schema)


def build_fused_model(manifest: ArtifactManifest, schema: FeatureSchema) -> EMMModel:
    """An (untrained) EMM model shaped exactly as `manifest` describes, plug-ins included.

    Members are rebuilt from their component manifests; loading the artifact's state
    dict then restores every weight. Manifests without `steps` (one fusion step) load too.
    """
    if manifest.architecture != FUSED_ARCHITECTURE:
        raise ArtifactIntegrityError(
            f"{manifest.name!r} is a {manifest.architecture!r} artifact, not a fused EMM model"
        )
    config = FusionConfig.model_validate(manifest.hparams["fusion"])
    members = {
        c.name: PoolMember(
            c.name,
            build_model(c.architecture, schema, c.tasks[0], **c.hparams),
            c.model_dump(mode="json"),
        )
        for c in manifest.components
    }
    steps = manifest.hparams.get("steps") or [list(members)]
    listed = [name for step in steps for name in step]
    if sorted(listed) != sorted(members):
        raise ArtifactIntegrityError(
            f"fused model {manifest.name!r}: steps list {listed} but components are {list(members)}"
        )
    model = EMMModel(schema, [members[n] for n in steps[0]], config)
    for step in steps[1:]:
        model.add_members([members[n] for n in step])
    return model


def load_fused_model(
    directory: str | Path, expected_schema: FeatureSchema | None = None
) -> tuple[EMMModel, ArtifactManifest]:
    """Verify and rebuild a saved fused model (eval mode) and return it with its manifest."""
    artifact = load_module_artifact(directory, expected_schema)
    model = build_fused_model(artifact.manifest, artifact.schema)
    try:
        model.load_state_dict(artifact.state_dict, strict=True)
    except RuntimeError as exc:
        raise ArtifactIntegrityError(
            f"{directory}: weights do not fit the fused model its manifest describes: {exc}"
        ) from exc
    return model.eval(), artifact.manifest
