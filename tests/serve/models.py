"""Tiny models registered in a temporary MLflow store, and raw records for them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from emm_ray.baselines import build_baseline
from emm_ray.baselines.stage import BASELINE_KIND
from emm_ray.data.batch import BatchCollator
from emm_ray.data.schema import DenseField, FeatureSchema, SparseField, Task
from emm_ray.fusion import EMMModel, FusionConfig
from emm_ray.fusion import PoolMember as FusionMember
from emm_ray.fusion.artifact import save_fused_model
from emm_ray.models.registry import build_model
from emm_ray.tracking.artifacts import (
    STATE_FILE,
    ArtifactManifest,
    parameter_checksum,
    save_module_artifact,
)
from emm_ray.tracking.store import ensure_experiment, tracking_client
from emm_ray.train.members import MEMBER_KIND
from emm_ray.tune.registry import register_artifact

SCHEMA = FeatureSchema(
    dataset="census-tiny",
    sparse=(
        SparseField(name="education", vocabulary=("Bachelors degree(BA AB BS)", "High school")),
        SparseField(name="class of worker", vocabulary=("Private", "State government", "Never")),
        SparseField(name="detailed industry recode", vocabulary=("0", "4", "33", "45")),
    ),
    dense=(
        DenseField(name="age", mean=40.0, std=12.0),
        DenseField(name="capital gains", transform="log1p", mean=1.5, std=2.5),
    ),
    tasks=(Task(name="income"), Task(name="never_married")),
)


@dataclass(frozen=True)
class RegisteredModel:
    """What a test needs to call the served model and to recompute its answers."""

    name: str
    version: str
    tracking_uri: str
    schema: FeatureSchema
    module: nn.Module
    tasks: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _member(name: str, task: str) -> FusionMember:
    model = build_model("mlp", SCHEMA, task, embed_dim=4, hidden=(8, 8)).eval()
    manifest = ArtifactManifest(
        kind=MEMBER_KIND,
        name=name,
        architecture="mlp",
        tasks=(task,),
        hparams=model.hparams,
        schema_hash=SCHEMA.hash,
        parameter_checksum=parameter_checksum(model.state_dict()),
    )
    return FusionMember(name, model, manifest.model_dump(mode="json"))


def _register(client: MlflowClient, directory: Path, name: str) -> str:
    run = client.create_run(ensure_experiment(client, "serve-test"))
    client.log_artifacts(run.info.run_id, str(directory), "model")
    client.set_terminated(run.info.run_id)
    version = register_artifact(
        client, name, run.info.run_id, "model", metrics={"val_auc": 0.5}, alias="champion"
    )
    return str(version.version)


def register_tiny_models(directory: Path) -> tuple[RegisteredModel, RegisteredModel]:
    """A seeded fused model over two pool members, and one of those members, registered.

    Weights are untrained (seeded): serving must reproduce whatever the model computes.
    """
    tracking_uri = f"sqlite:///{directory / 'mlruns.db'}"
    client = tracking_client(tracking_uri)
    torch.manual_seed(0)
    income, married = _member("mlp_income", "income"), _member("mlp_married", "never_married")
    fused = EMMModel(
        SCHEMA, [income, married], FusionConfig(d_model=8, heads=2, top_k=1, tower_hidden=(8,))
    ).eval()
    save_fused_model(fused, directory / "fused", "emm-tiny")
    fused_version = _register(client, directory / "fused", "emm-tiny")
    member_manifest = ArtifactManifest.model_validate(income.manifest)
    save_module_artifact(directory / "member", income.model.state_dict(), member_manifest, SCHEMA)
    member_version = _register(client, directory / "member", "emm-tiny-income")
    return (
        RegisteredModel(
            "emm-tiny", fused_version, tracking_uri, SCHEMA, fused, tuple(fused.task_names)
        ),
        RegisteredModel(
            "emm-tiny-income", member_version, tracking_uri, SCHEMA, income.model, ("income",)
        ),
    )


def register_member_version(
    directory: Path, tracking_uri: str, name: str, *, tampered: bool = False
) -> str:
    """A new version of `name` (a seeded single-task member) as `@champion`; `tampered`:
    its weights file is changed after the checksum was written, so it must not load."""
    torch.manual_seed(1)
    member = _member(name, "income")
    manifest = ArtifactManifest.model_validate(member.manifest)
    save_module_artifact(directory, member.model.state_dict(), manifest, SCHEMA)
    if tampered:
        state = torch.load(directory / STATE_FILE, weights_only=True)
        state = {key: value + 1e-3 for key, value in state.items()}
        torch.save(state, directory / STATE_FILE)
    return _register(tracking_client(tracking_uri), directory, name)


def register_tiny_baseline(directory: Path, name: str = "ple") -> RegisteredModel:
    """A seeded end-to-end baseline (`name`, every task of the schema), registered."""
    tracking_uri = f"sqlite:///{directory / 'mlruns.db'}"
    torch.manual_seed(0)
    model = build_baseline(name, SCHEMA, embed_dim=4).eval()
    manifest = ArtifactManifest(
        kind=BASELINE_KIND,
        name=f"{name}-tiny",
        architecture=name,
        tasks=tuple(model.task_names),
        hparams=model.hparams,
        schema_hash=SCHEMA.hash,
        parameter_checksum=parameter_checksum(model.state_dict()),
    )
    save_module_artifact(directory / name, model.state_dict(), manifest, SCHEMA)
    version = _register(tracking_client(tracking_uri), directory / name, f"{name}-tiny")
    return RegisteredModel(
        f"{name}-tiny", version, tracking_uri, SCHEMA, model, tuple(model.task_names)
    )


def raw_rows(schema: FeatureSchema, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Records as a client sends them: known categories (some as integers), raw numbers."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        row: dict[str, Any] = {}
        for field in schema.sparse:
            value = rng.choice(field.vocabulary)
            row[field.name] = int(value) if value.isdigit() and rng.random() < 0.5 else value
        for field in schema.dense:
            row[field.name] = rng.choice([rng.randint(0, 90), round(rng.uniform(0, 5000), 3)])
        rows.append(row)
    return rows


def expected_probabilities(model: RegisteredModel, rows: list[dict[str, Any]]) -> np.ndarray:
    """The model's own probabilities for raw rows, encoded by the schema in-process."""
    schema = model.schema
    table = pa.table(
        {
            **{f.name: pa.array([str(r[f.name]) for r in rows]) for f in schema.sparse},
            **{f.name: pa.array([float(r[f.name]) for r in rows]) for f in schema.dense},
            **{t: pa.array([0] * len(rows), pa.int8()) for t in schema.task_names},
        }
    )
    encoded = schema.encode(table)
    batch = BatchCollator(schema)({n: encoded.column(n).to_numpy() for n in encoded.column_names})
    with torch.inference_mode():
        logits = model.module(batch.sparse, batch.dense).reshape(len(rows), -1)
    return torch.sigmoid(logits.double()).numpy()
