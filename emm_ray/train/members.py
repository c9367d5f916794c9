"""Pool members in MLflow: how a trained member is recorded, found and loaded back.

Each member is one MLflow run tagged with what identifies its work — member name,
spec digest (architecture, task, full hyperparameters, training config), schema hash
and data fingerprint — so a rerun can find members already trained on the same data,
and fusion can load exactly the members trained for its dataset. The weights are a
`tracking.artifacts` directory under the run's `model/` artifact path.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ArtifactIntegrityError, EmmError
from emm_ray.models.base import DecomposableModel
from emm_ray.models.registry import build_model
from emm_ray.tracking.artifacts import (
    ArtifactManifest,
    load_module_artifact,
    save_module_artifact,
)
from emm_ray.tracking.store import (
    claim_run,
    download_run_directory,
    ensure_experiment,
    find_runs,
    flatten_params,
    log_history,
    log_metrics,
    log_params,
    spec_digest,
    tag,
    tag_nodes,
    tag_resumed,
    tracking_client,
)
from emm_ray.train.loop import TrainConfig
from emm_ray.train.ray_job import TrainOutcome

MODEL_ARTIFACT_PATH = "model"
MEMBER_KIND = "pool_member"


@dataclass(frozen=True)
class ZooModelFactory:
    """Picklable `schema -> model` recipe for a zoo architecture (built inside Ray workers)."""

    architecture: str
    task: str
    hparams: dict[str, Any]

    def __call__(self, schema: FeatureSchema) -> DecomposableModel:
        return build_model(self.architecture, schema, self.task, **self.hparams)


@dataclass(frozen=True)
class MemberIdentity:
    """What makes two trainings of a member the same work: the rerun key, as MLflow tags."""

    pool: str
    name: str
    architecture: str
    task: str
    hparams: dict[str, Any]
    train: TrainConfig
    schema_hash: str
    data_fingerprint: str

    @property
    def digest(self) -> str:
        return spec_digest(
            {
                "architecture": self.architecture,
                "task": self.task,
                "hparams": self.hparams,
                "train": self.train.model_dump(mode="json"),
            }
        )

    def lookup_tags(self) -> dict[str, str]:
        return {
            "kind": MEMBER_KIND,
            "member": self.name,
            "spec_digest": self.digest,
            "schema_hash": self.schema_hash,
            "data_fingerprint": self.data_fingerprint,
        }

    def description_tags(self) -> dict[str, str]:
        return {"pool": self.pool, "architecture": self.architecture, "task": self.task}


@dataclass(frozen=True)
class PoolMember:
    """A loaded, verified member: the model (eval mode), its manifest and its run."""

    run_id: str
    model: DecomposableModel
    manifest: ArtifactManifest
    schema: FeatureSchema

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def task(self) -> str:
        return self.manifest.tasks[0]


def find_finished_member(
    client: MlflowClient, experiment_id: str, identity: MemberIdentity
) -> str | None:
    """Run id of the newest FINISHED run of exactly this member work, if any."""
    runs = find_runs(client, experiment_id, identity.lookup_tags())
    return runs[0].info.run_id if runs else None


def start_member_run(
    client: MlflowClient,
    experiment_id: str,
    identity: MemberIdentity,
    resources: dict[str, Any],
    reopen: bool = True,
) -> str:
    """Open the member's run (RUNNING) with its params, before training starts; an
    interrupted attempt's run is reopened unless `reopen` is off (`claim_run`)."""
    run_id = claim_run(
        client,
        experiment_id,
        identity.lookup_tags(),
        identity.name,
        extra_tags=identity.description_tags(),
        reopen=reopen,
    )
    params = {
        "architecture": identity.architecture,
        "task": identity.task,
        **flatten_params("hparam", identity.hparams),
        **flatten_params("train", identity.train.model_dump(mode="json")),
        **flatten_params("resources", resources),
    }
    log_params(client, run_id, params)
    return run_id


def finish_member_run(
    client: MlflowClient,
    run_id: str,
    identity: MemberIdentity,
    outcome: TrainOutcome,
    schema: FeatureSchema,
) -> ArtifactManifest:
    """Log history, final metrics and the verified artifact; mark the run FINISHED."""
    now = int(time.time() * 1000)
    log_history(client, run_id, outcome.history, now)
    final = {
        **{f"best_{k}": v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
        "best_epoch": float(outcome.best_epoch),
        "epochs_run": float(len(outcome.history)),
        "wall_seconds": outcome.wall_seconds,
        "samples_per_s": outcome.samples_per_s,
    }
    log_metrics(client, run_id, final, now)
    manifest = ArtifactManifest(
        kind=MEMBER_KIND,
        name=identity.name,
        architecture=identity.architecture,
        tasks=(identity.task,),
        hparams=identity.hparams,
        schema_hash=schema.hash,
        data_fingerprint=identity.data_fingerprint,
        metrics={k: v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
        extra={
            "run_id": run_id,
            "pool": identity.pool,
            "best_epoch": outcome.best_epoch,
            "device": outcome.device,
            "train": identity.train.model_dump(mode="json"),
        },
    )
    with tempfile.TemporaryDirectory() as directory:
        manifest = save_module_artifact(Path(directory), outcome.state_dict, manifest, schema)
        client.log_artifacts(run_id, directory, MODEL_ARTIFACT_PATH)
    client.set_tag(run_id, tag("parameter_checksum"), manifest.parameter_checksum)
    tag_resumed(client, run_id, outcome.resumed_after_epoch)
    tag_nodes(client, run_id, outcome.nodes)
    if outcome.notes:
        client.set_tag(run_id, tag("notes"), "\n".join(outcome.notes)[:5000])
    client.set_terminated(run_id, "FINISHED")
    return manifest


def fail_member_run(client: MlflowClient, run_id: str, error: str) -> None:
    """Record why a member failed and mark its run FAILED (it will be retried on rerun)."""
    client.set_tag(run_id, tag("error"), error[:5000])
    client.set_terminated(run_id, "FAILED")


def load_member(
    run_id: str,
    *,
    schema: FeatureSchema | None = None,
    tracking_uri: str | None = None,
    client: MlflowClient | None = None,
    device: torch.device | str = "cpu",
) -> PoolMember:
    """Download, verify and rebuild a member from its MLflow run.

    `schema` is the data's schema: a member trained on another raises
    `SchemaMismatchError`; damaged or altered files raise `ArtifactIntegrityError`.
    """
    client = client or tracking_client(tracking_uri)
    with tempfile.TemporaryDirectory() as directory:
        local = download_run_directory(client, run_id, MODEL_ARTIFACT_PATH, directory)
        artifact = load_module_artifact(local, expected_schema=schema)
    manifest = artifact.manifest
    if manifest.kind != MEMBER_KIND:
        raise EmmError(f"run {run_id} holds a {manifest.kind!r} artifact, not a pool member")
    model = build_model(
        manifest.architecture, artifact.schema, manifest.tasks[0], **manifest.hparams
    )
    try:
        model.load_state_dict(artifact.state_dict, strict=True)
    except RuntimeError as exc:
        raise ArtifactIntegrityError(
            f"run {run_id}: weights do not fit {manifest.architecture} with the recorded "
            f"hyperparameters: {exc}"
        ) from exc
    return PoolMember(run_id, model.to(device).eval(), manifest, artifact.schema)


def find_member(
    name: str,
    *,
    experiment: str = "emm-pool",
    schema_hash: str | None = None,
    data_fingerprint: str | None = None,
    tracking_uri: str | None = None,
    client: MlflowClient | None = None,
) -> str:
    """Run id of the newest FINISHED run of member `name` (optionally for given data)."""
    client = client or tracking_client(tracking_uri)
    experiment_id = ensure_experiment(client, experiment)
    tags = {"kind": MEMBER_KIND, "member": name}
    if schema_hash is not None:
        tags["schema_hash"] = schema_hash
    if data_fingerprint is not None:
        tags["data_fingerprint"] = data_fingerprint
    runs = find_runs(client, experiment_id, tags)
    if not runs:
        raise EmmError(
            f"no finished run of pool member {name!r} in experiment {experiment!r} "
            f"matching {tags}; train the pool first (pipelines/pool.py)"
        )
    return runs[0].info.run_id
