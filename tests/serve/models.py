"""A tiny model registered in a temporary MLflow store, and raw records for it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emm_ray.data.schema import DenseField, FeatureSchema, SparseField, Task
from emm_ray.models.registry import build_model
from emm_ray.tracking.artifacts import ArtifactManifest, save_module_artifact
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


def register_tiny_model(directory: Path, name: str = "emm-tiny") -> RegisteredModel:
    """Save a seeded single-task MLP as an artifact, log it to a run and register it."""
    torch.manual_seed(0)
    module = build_model("mlp", SCHEMA, "income", embed_dim=4, hidden=(8, 8)).eval()
    manifest = ArtifactManifest(
        kind=MEMBER_KIND,
        name="income-mlp",
        architecture="mlp",
        tasks=("income",),
        hparams=module.hparams,
        schema_hash=SCHEMA.hash,
    )
    save_module_artifact(directory / "artifact", module.state_dict(), manifest, SCHEMA)
    tracking_uri = f"sqlite:///{directory / 'mlruns.db'}"
    client = tracking_client(tracking_uri)
    run = client.create_run(ensure_experiment(client, "serve-test"))
    client.log_artifacts(run.info.run_id, str(directory / "artifact"), "model")
    client.set_terminated(run.info.run_id)
    version = register_artifact(
        client, name, run.info.run_id, "model", metrics={"val_auc": 0.5}, alias="champion"
    )
    return RegisteredModel(
        name, str(version.version), tracking_uri, SCHEMA, module, tuple(manifest.tasks)
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
