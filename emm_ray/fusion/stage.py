"""The `fuse` stage: load a trained pool from MLflow, fuse it on Ray, log the result.

`fuse_pool` resolves the pool members trained on the prepared data (by name, or every
member logged for this schema and data), ships their weights to a Ray job whose factory
builds the EMM model inside the worker (Ray Train, on Ray Data-streamed batches when the
split is too large for memory or several workers are asked for; one Ray task for a
small split, `ray_job.run_job`), trains only the fusion parameters, and logs one MLflow
run: parameters, per-epoch metrics, parameter counts and the fused model artifact (with
every member's manifest inside). `plug_members` does the same for plug-and-play: it
rebuilds a logged fused model, adds members, and trains only the new parts.

A run is identified by a digest of what it fuses and how (fusion and training options,
member run ids, the base fused run) plus schema hash and data fingerprint: rerunning the
same stage finds the finished run and reuses it instead of training again.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from mlflow.tracking import MlflowClient
from pydantic import Field, field_validator

from emm_ray import storage
from emm_ray.checksum import parameter_checksum
from emm_ray.config import StrictModel, load_yaml_config
from emm_ray.data.prepare import PreparedDataset
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ArtifactIntegrityError, ConfigError, EmmError
from emm_ray.fusion.artifact import (
    FUSED_KIND,
    build_fused_model,
    load_fused_model,
    save_fused_model,
)
from emm_ray.fusion.config import FusionConfig
from emm_ray.fusion.decompose import PoolMember
from emm_ray.fusion.model import EMMModel
from emm_ray.models.registry import build_model
from emm_ray.tracking.artifacts import ArtifactManifest
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
from emm_ray.train.members import MEMBER_KIND, find_member, load_member
from emm_ray.train.ray_job import DataMode, TrainJob, TrainOutcome, WorkerResources, run_job

logger = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class FuseSpec(StrictModel):
    """What to fuse and how: the `fuse:` section of a run config (e.g. `configs/census.yaml`).

    `members` names the pool members to fuse; `None` fuses every member logged in
    `pool_experiment` for this data. Fusion streams through Ray Data when the split is
    too large for memory (`data_mode: auto`; `stream` forces it). A
    `pool_residual` model starts at its pool's ensemble, so unless `train` says otherwise
    it is validated before training and kept as it is when no epoch improves on it.
    `fusion` is the settings themselves or the path of a preset file
    (`configs/fusion/*.yaml`, relative to the working directory).
    """

    name: str = Field("emm", pattern=NAME_PATTERN)
    experiment: str = "emm-fusion"
    pool_experiment: str = "emm-pool"
    members: tuple[str, ...] | None = None
    fusion: FusionConfig = FusionConfig()
    train: TrainConfig = TrainConfig(epochs=10, lr=2e-3, patience=2)
    resources: WorkerResources = WorkerResources()
    data_mode: DataMode = "auto"

    @field_validator("fusion", mode="before")
    @classmethod
    def read_preset(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return load_yaml_config(value, FusionConfig)
        except ConfigError as exc:  # a ValueError names the run config's key as well
            raise ValueError(f"fusion preset: {exc}") from exc

    @property
    def fit_config(self) -> TrainConfig:
        """`train`, with `validate_initial` on for a `pool_residual` model unless set."""
        if (
            self.fusion.prediction == "pool_residual"
            and "validate_initial" not in self.train.model_fields_set
        ):
            return self.train.model_copy(update={"validate_initial": True})
        return self.train


@dataclass(frozen=True)
class MemberWeights:
    """A trained pool member as it travels to a Ray Train worker: recipe, weights, manifest."""

    name: str
    architecture: str
    task: str
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    manifest: dict[str, Any]

    @classmethod
    def from_manifest(
        cls, manifest: ArtifactManifest, state_dict: dict[str, torch.Tensor]
    ) -> MemberWeights:
        return cls(
            name=manifest.name,
            architecture=manifest.architecture,
            task=manifest.tasks[0],
            hparams=dict(manifest.hparams),
            state_dict=state_dict,
            manifest=manifest.model_dump(mode="json"),
        )

    def build(self, schema: FeatureSchema) -> PoolMember:
        model = build_model(self.architecture, schema, self.task, **self.hparams)
        model.load_state_dict(self.state_dict, strict=True)
        return PoolMember(self.name, model.eval(), self.manifest)


@dataclass(frozen=True)
class FusedModelFactory:
    """Picklable `schema -> EMMModel`, built inside each Ray Train worker.

    Without `base_manifest` it fuses `members`; with it, it rebuilds that fused model,
    loads `base_state`, and adds `members` by plug-and-play (only new parts trainable).
    """

    members: tuple[MemberWeights, ...]
    config: FusionConfig
    base_manifest: dict[str, Any] | None = None
    base_state: dict[str, torch.Tensor] | None = None

    def __call__(self, schema: FeatureSchema) -> EMMModel:
        pool = [m.build(schema) for m in self.members]
        if self.base_manifest is None:
            return EMMModel(schema, pool, self.config)
        model = build_fused_model(ArtifactManifest.model_validate(self.base_manifest), schema)
        model.load_state_dict(self.base_state or {}, strict=True)
        model.add_members(pool)
        return model


@dataclass
class FuseResult:
    """A fused model's MLflow run, its manifest, and how it got there."""

    run_id: str
    manifest: ArtifactManifest
    status: Literal["trained", "skipped"]
    outcome: TrainOutcome | None = None

    @property
    def val_auc(self) -> float:
        return self.manifest.metrics.get("val_auc", float("nan"))


def fuse_pool(
    spec: FuseSpec,
    prepared: PreparedDataset | str | Path,
    *,
    storage_path: str | Path,
    tracking_uri: str | None = None,
    force: bool = False,
) -> FuseResult:
    """Fuse the pool `spec` names (trained on `prepared`) on the connected Ray cluster."""
    prepared = _prepared(prepared)
    client = tracking_client(tracking_uri)
    members = resolve_pool(client, spec, prepared)
    factory = FusedModelFactory(tuple(members), spec.fusion)
    identity = {"members": {m.name: m.manifest["extra"].get("run_id") for m in members}}
    return _train_and_log(client, spec, prepared, factory, identity, storage_path, force)


def plug_members(
    spec: FuseSpec,
    prepared: PreparedDataset | str | Path,
    base_run_id: str,
    new_members: Sequence[str],
    *,
    storage_path: str | Path,
    tracking_uri: str | None = None,
    force: bool = False,
) -> FuseResult:
    """Add pool members `new_members` to the fused model of `base_run_id`; train only new parts.

    The result is logged as a new fused run (`spec.name`) whose artifact lists every
    member, old and new; the base run is untouched.
    """
    prepared = _prepared(prepared)
    client = tracking_client(tracking_uri)
    base_model, base_manifest = load_fused_run(client, base_run_id, prepared.schema)
    taken = sorted(set(new_members) & set(base_model.member_names))
    if taken:
        raise ConfigError(f"fused run {base_run_id} already contains members {taken}")
    members = resolve_pool(
        client, spec.model_copy(update={"members": tuple(new_members)}), prepared
    )
    factory = FusedModelFactory(
        tuple(members),
        FusionConfig.model_validate(base_manifest.hparams["fusion"]),
        base_manifest.model_dump(mode="json"),
        {k: v.detach().clone() for k, v in base_model.state_dict().items()},
    )
    identity = {
        "base_run": base_run_id,
        "members": {m.name: m.manifest["extra"].get("run_id") for m in members},
    }
    return _train_and_log(client, spec, prepared, factory, identity, storage_path, force)


def resolve_pool(
    client: MlflowClient, spec: FuseSpec, prepared: PreparedDataset
) -> list[MemberWeights]:
    """Load and verify the pool members `spec` asks for, trained on exactly this data."""
    schema = prepared.schema
    fingerprint = str(prepared.split_info["config_hash"])
    if spec.members is not None:
        run_ids = [
            find_member(
                name,
                experiment=spec.pool_experiment,
                schema_hash=schema.hash,
                data_fingerprint=fingerprint,
                client=client,
            )
            for name in spec.members
        ]
    else:
        experiment_id = ensure_experiment(client, spec.pool_experiment)
        runs = find_runs(
            client,
            experiment_id,
            {"kind": MEMBER_KIND, "schema_hash": schema.hash, "data_fingerprint": fingerprint},
        )
        newest: dict[str, str] = {}
        for run in runs:
            newest.setdefault(run.data.tags[tag("member")], run.info.run_id)
        if not newest:
            raise EmmError(
                f"no trained pool member in experiment {spec.pool_experiment!r} for "
                f"{prepared.location} (schema {schema.hash}); run pipelines/pool.py first"
            )
        run_ids = [newest[name] for name in sorted(newest)]
    loaded = [load_member(run_id, schema=schema, client=client) for run_id in run_ids]
    return [MemberWeights.from_manifest(m.manifest, m.model.state_dict()) for m in loaded]


def load_fused_run(
    client: MlflowClient, run_id: str, schema: FeatureSchema | None = None
) -> tuple[EMMModel, ArtifactManifest]:
    """Download, verify and rebuild the fused model logged in `run_id`."""
    with tempfile.TemporaryDirectory() as directory:
        local = download_run_directory(client, run_id, MODEL_ARTIFACT_PATH, directory)
        return load_fused_model(local, expected_schema=schema)


def find_fused_run(
    client: MlflowClient,
    experiment: str,
    name: str,
    schema_hash: str,
    data_fingerprint: str,
) -> str:
    """Run id of the newest finished fused model `name` trained on this data."""
    experiment_id = ensure_experiment(client, experiment)
    tags = {
        "kind": FUSED_KIND,
        "name": name,
        "schema_hash": schema_hash,
        "data_fingerprint": data_fingerprint,
    }
    runs = find_runs(client, experiment_id, tags)
    if not runs:
        raise EmmError(
            f"no finished fused model {name!r} in experiment {experiment!r} for this data "
            f"(schema {schema_hash}); run pipelines/fuse.py first"
        )
    return runs[0].info.run_id


def verify_frozen(model: EMMModel, factory: FusedModelFactory, schema: FeatureSchema) -> None:
    """Raise unless training left everything frozen bit-identical: every member's frozen
    components (compared with the member as trained) and, for plug-and-play, every
    parameter of the base fused model."""
    aligned = {m.name: m for m in model.members}
    for member in factory.members:
        expected = parameter_checksum(member.build(schema).model.state_dict())
        if parameter_checksum(aligned[member.name].frozen_state()) != expected:
            raise ArtifactIntegrityError(
                f"pool member {member.name!r} changed during fusion: its frozen components "
                "no longer match the trained member"
            )
    state = model.state_dict()
    changed = [k for k, v in (factory.base_state or {}).items() if not torch.equal(state[k], v)]
    if changed:
        raise ArtifactIntegrityError(
            f"plug-and-play changed {len(changed)} parameters of the base fused model, "
            f"e.g. {changed[:3]}"
        )


def _prepared(prepared: PreparedDataset | str | Path) -> PreparedDataset:
    return prepared if isinstance(prepared, PreparedDataset) else PreparedDataset.load(prepared)


def _train_and_log(
    client: MlflowClient,
    spec: FuseSpec,
    prepared: PreparedDataset,
    factory: FusedModelFactory,
    identity: dict[str, Any],
    storage_path: str | Path,
    force: bool,
) -> FuseResult:
    """Train `factory`'s model on Ray Train unless this exact work is logged already."""
    schema = prepared.schema
    fingerprint = str(prepared.split_info["config_hash"])
    digest = spec_digest(
        {
            "fusion": factory.config.model_dump(mode="json"),
            "train": spec.fit_config.model_dump(mode="json"),
            **identity,
        }
    )
    lookup = {
        "kind": FUSED_KIND,
        "name": spec.name,
        "spec_digest": digest,
        "schema_hash": schema.hash,
        "data_fingerprint": fingerprint,
    }
    experiment_id = ensure_experiment(client, spec.experiment)
    if not force:
        finished = find_runs(client, experiment_id, lookup)
        if finished:
            run_id = finished[0].info.run_id
            logger.info("%s: already fused for this data and spec (run %s)", spec.name, run_id)
            _, manifest = load_fused_run(client, run_id, schema)
            return FuseResult(run_id, manifest, "skipped")

    run_id = claim_run(client, experiment_id, lookup, spec.name, reopen=not force)
    log_params(
        client,
        run_id,
        {
            **flatten_params("fusion", factory.config.model_dump(mode="json")),
            **flatten_params("train", spec.fit_config.model_dump(mode="json")),
            **flatten_params("resources", spec.resources.model_dump()),
            **flatten_params("", identity),
        },
    )
    try:
        model = factory(schema)
        tasks = tuple(model.task_names)
        job = TrainJob(
            name=f"fuse-{spec.name}",
            module_factory=factory,
            data_dir=prepared.location,
            tasks=tasks,
            config=spec.fit_config,
            storage_path=storage.resolve(storage_path),
            run_key=run_id,
            resources=spec.resources,
            data_mode=spec.data_mode,
            precompute_key=model.precompute_key(model.stored_names()),
            precompute_features=tuple(model.stored_names()),
        )
        outcome = run_job(job)
        model.load_state_dict(outcome.state_dict, strict=True)
        verify_frozen(model, factory, schema)
        manifest = _log_outcome(client, run_id, spec, model, outcome, fingerprint)
    except BaseException as exc:
        client.set_tag(run_id, tag("error"), f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    logger.info(
        "%s: fused, val AUC %.4f (epoch %d) in %.1f s, run %s",
        spec.name,
        outcome.shipped_metrics["val_auc"],
        outcome.best_epoch,
        outcome.wall_seconds,
        run_id,
    )
    return FuseResult(run_id, manifest, "trained", outcome)


def _log_outcome(
    client: MlflowClient,
    run_id: str,
    spec: FuseSpec,
    model: EMMModel,
    outcome: TrainOutcome,
    fingerprint: str,
) -> ArtifactManifest:
    now = int(time.time() * 1000)
    log_history(client, run_id, outcome.history, now)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    log_metrics(
        client,
        run_id,
        {
            **{f"best_{k}": v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
            **{f"final_{k}": v for k, v in outcome.shipped_metrics.items() if k.startswith("val_")},
            **correction_choice_metrics(outcome.finish_report),
            "best_epoch": float(outcome.best_epoch),
            "epochs_run": float(len(outcome.history)),
            "wall_seconds": outcome.wall_seconds,
            "samples_per_s": outcome.samples_per_s,
            "trainable_parameters": float(trainable),
            "total_parameters": float(sum(p.numel() for p in model.parameters())),
        },
        now,
    )
    with tempfile.TemporaryDirectory() as directory:
        manifest = save_fused_model(
            model,
            directory,
            spec.name,
            metrics={k: v for k, v in outcome.shipped_metrics.items() if k.startswith("val_")},
            data_fingerprint=fingerprint,
            extra={
                "run_id": run_id,
                "best_epoch": outcome.best_epoch,
                "device": outcome.device,
                "train": spec.fit_config.model_dump(mode="json"),
            },
        )
        client.log_artifacts(run_id, directory, MODEL_ARTIFACT_PATH)
    client.set_tag(run_id, tag("parameter_checksum"), manifest.parameter_checksum)
    tag_resumed(client, run_id, outcome.resumed_after_epoch)
    tag_nodes(client, run_id, outcome.nodes)
    return manifest


def correction_choice_metrics(report: dict[str, dict[str, float]] | None) -> dict[str, float]:
    """MLflow metrics of the per-task choice after training (`finish_training`): the
    validation AUC of the bare ensemble and with the correction, and which was kept."""
    return {
        f"{name}_{task}": float(value)
        for task, choice in (report or {}).items()
        for name, value in (
            ("ensemble_val_auc", choice["ensemble_auc"]),
            ("corrected_val_auc", choice["corrected_auc"]),
            ("correction_kept", choice["kept"]),
        )
    }
