"""The `evaluate` stage: score the fused model, its pool and the baselines on one test set.

The test set is the prepared test split, or any raw file of the dataset's format
encoded with the fused model's saved schema (its vocabularies and scalers; unseen
categories go to the OOV index), so a file the pipeline never saw is scored exactly as
training data was encoded. Every model is scored on the same rows: AUC and log loss per
task (`report.json`, `report.md`), plus the fused model's gate report (`gates.*`). All of
it is logged to one MLflow run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from pydantic import Field
from torch import nn

from emm_ray.baselines.stage import load_baseline
from emm_ray.config import StrictModel
from emm_ray.data.batch import Batch, BatchCollator
from emm_ray.data.prepare import PreparedDataset, encode_raw_file
from emm_ray.data.schema import FeatureSchema
from emm_ray.data.streaming import load_split
from emm_ray.data.synthetic import SYNTHETIC_SUFFIX
from emm_ray.errors import SchemaMismatchError
from emm_ray.evaluation.gates import summarize_gates, write_gate_report
from emm_ray.evaluation.metrics import score_module
from emm_ray.evaluation.report import ModelKind, ReportRow, write_report
from emm_ray.fusion.model import EMMModel
from emm_ray.fusion.stage import load_fused_run
from emm_ray.tracking.store import (
    claim_run,
    ensure_experiment,
    log_metrics,
    spec_digest,
    tracking_client,
)
from emm_ray.train.loop import inference_batch_size
from emm_ray.train.members import load_member

logger = logging.getLogger(__name__)

EVALUATION_KIND = "evaluation"


class EvaluateSpec(StrictModel):
    """Where evaluation runs are logged and how many rows are scored per forward
    (`None`: the device's default, `inference_batch_size`)."""

    experiment: str = "emm-evaluation"
    batch_size: int | None = Field(None, ge=1)
    gate_report: bool = True


@dataclass
class ScoredModel:
    """A model under evaluation: its logits' columns are `task_names` (`task_indices`)."""

    name: str
    kind: ModelKind
    module: nn.Module
    task_names: list[str]
    task_indices: list[int]


@dataclass
class EvaluationResult:
    rows: list[ReportRow]
    output_dir: Path
    run_id: str
    notes: list[str] = field(default_factory=list)


def evaluation_data(schema: FeatureSchema, prepared: Path | None, test_path: Path | None) -> Batch:
    """The rows to score: `test_path` (a raw file) encoded with `schema`, else the test split."""
    if test_path is not None:
        table = encode_raw_file(schema, schema.dataset.removesuffix(SYNTHETIC_SUFFIX), test_path)
        columns = {name: table.column(name).to_numpy() for name in table.column_names}
        return BatchCollator(schema)(columns)
    if prepared is None:
        raise SchemaMismatchError("give a prepared dataset or a raw test file to evaluate on")
    data = PreparedDataset.load(prepared)
    data.schema.check_compatible(schema.hash, f"the fused model (prepared data {prepared})")
    return load_split(prepared, "test")


def gather_models(
    client: MlflowClient,
    fused_run_id: str,
    baseline_runs: dict[str, str],
) -> tuple[EMMModel, list[ScoredModel], list[str]]:
    """The fused model, its pool members (from their own runs) and the baselines.

    Pool members whose manifest names no run (never logged alone) are skipped, with a note.
    """
    fused, manifest = load_fused_run(client, fused_run_id)
    schema = fused.schema
    models = [ScoredModel(manifest.name, "fused", fused, fused.task_names, fused.task_indices)]
    notes = []
    for component in manifest.components:
        run_id = component.extra.get("run_id")
        if run_id is None:
            notes.append(f"pool member {component.name!r} has no MLflow run: not scored alone")
            continue
        member = load_member(run_id, schema=schema, client=client)
        task = member.task
        models.append(
            ScoredModel(member.name, "pool", member.model, [task], [schema.task_index(task)])
        )
    for name, run_id in baseline_runs.items():
        baseline = load_baseline(client, run_id, schema)
        models.append(
            ScoredModel(name, "baseline", baseline, baseline.task_names, baseline.task_indices)
        )
    return fused, models, notes


def score_models(
    models: Sequence[ScoredModel], data: Batch, batch_size: int | None
) -> list[ReportRow]:
    """Report rows of every model on the same rows."""
    rows: list[ReportRow] = []
    for model in models:
        rows += score_module(
            model.name,
            model.kind,
            model.module,
            data,
            model.task_indices,
            model.task_names,
            batch_size,
        )
    return rows


def run_evaluation(
    fused_run_id: str,
    output_dir: str | Path,
    *,
    prepared: Path | None = None,
    test_path: Path | None = None,
    baseline_runs: dict[str, str] | None = None,
    spec: EvaluateSpec | None = None,
    tracking_uri: str | None = None,
) -> EvaluationResult:
    """Score everything on one test set, write the reports, log them to MLflow."""
    spec = spec or EvaluateSpec()
    client = tracking_client(tracking_uri)
    fused, models, notes = gather_models(client, fused_run_id, baseline_runs or {})
    data = evaluation_data(fused.schema, prepared, test_path)
    source = str(test_path) if test_path is not None else f"{prepared} (test split)"
    rows = score_models(models, data, spec.batch_size)
    output_dir = Path(output_dir)
    header = f"Test data: {source}, {len(data)} rows. Fused model run: {fused_run_id}."
    paths = list(write_report(rows, output_dir, "Evaluation", "\n".join([header, *notes])))
    if spec.gate_report:
        chunk = inference_batch_size(next(fused.parameters()).device, spec.batch_size)
        gates = summarize_gates(
            fused, (data.slice(slice(s, s + chunk)) for s in range(0, len(data), chunk))
        )
        paths += write_gate_report(gates, output_dir / "gates")
    inputs = {
        "data": source,
        "data_version": _data_version(prepared, test_path),
        "baselines": dict(sorted((baseline_runs or {}).items())),
        "spec": spec.model_dump(mode="json"),
        "models": sorted({r.model for r in rows}),
    }
    run_id = _log(client, spec, fused_run_id, source, inputs, rows, output_dir)
    logger.info(
        "evaluation of %d models on %d rows logged in run %s", len(models), len(data), run_id
    )
    return EvaluationResult(rows, output_dir, run_id, notes)


def _data_version(prepared: Path | None, test_path: Path | None) -> str:
    """What changes when the rows evaluated on change: the prepared split's config hash,
    or the raw test file's size and modification time."""
    if test_path is not None:
        stat = test_path.stat()
        return f"{stat.st_size}-{stat.st_mtime_ns}"
    assert prepared is not None  # evaluation_data refused the call otherwise
    return str(PreparedDataset.load(prepared).split_info["config_hash"])


def _log(
    client: MlflowClient,
    spec: EvaluateSpec,
    fused_run_id: str,
    source: str,
    inputs: dict[str, Any],
    rows: Sequence[ReportRow],
    output_dir: Path,
) -> str:
    """Log the evaluation in the run of exactly these inputs (fused run, data and its
    version, baseline runs, spec): an identical rerun redoes it in the same run."""
    experiment_id = ensure_experiment(client, spec.experiment)
    run_id = claim_run(
        client,
        experiment_id,
        {
            "kind": EVALUATION_KIND,
            "fused_run": fused_run_id,
            "inputs": spec_digest(inputs),
        },
        f"evaluate-{fused_run_id[:8]}",
        extra_tags={"data": source[:5000]},
        reuse_finished=True,
    )
    metrics = {}
    for row in rows:
        if row.auc is not None:
            metrics[f"test_auc.{row.model}.{row.task}"] = row.auc
        metrics[f"test_logloss.{row.model}.{row.task}"] = row.logloss
    log_metrics(client, run_id, metrics, int(time.time() * 1000))
    client.log_artifacts(run_id, str(output_dir))
    client.set_terminated(run_id, "FINISHED")
    return run_id
