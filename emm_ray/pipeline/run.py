"""prepare -> pool -> fuse -> baselines -> tune -> evaluate -> register -> serve.

Each stage asks MLflow first: trained pool members, a finished fused model, trained
baselines and a finished search for the same data and spec are reused, so a rerun (or a
run resumed after a failure) redoes only what is missing. Each stage prints one line with
its elapsed time; training stages also show Ray's own progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from emm_ray import storage
from emm_ray.baselines.stage import train_baselines
from emm_ray.data.prepare import PreparedDataset
from emm_ray.data.streaming import load_split
from emm_ray.errors import EmmError
from emm_ray.evaluation.report import ReportRow, render_markdown
from emm_ray.evaluation.stage import run_evaluation
from emm_ray.fusion.stage import FuseResult, fuse_pool
from emm_ray.pipeline.config import PipelineConfig
from emm_ray.pipeline.serving_check import ServingCheck, check_deployment
from emm_ray.progress import Console
from emm_ray.serve.app import deploy
from emm_ray.serve.loading import load_registered
from emm_ray.serve.settings import ServeSettings
from emm_ray.tracking.store import resolve_tracking_uri, tracking_client
from emm_ray.train.pool import PoolReport, train_pool
from emm_ray.tune.registry import register_artifact
from emm_ray.tune.runner import MODEL_ARTIFACT_PATH, SearchOutcome, run_search

logger = logging.getLogger(__name__)

ALIAS = "champion"
SERVING_CHECK_ROWS = 32

T = TypeVar("T")


@dataclass
class RunSummary:
    """What a run produced, for the final printout and `summary.json`."""

    output_dir: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_status: dict[str, str] = field(default_factory=dict)
    report_rows: list[ReportRow] = field(default_factory=list)
    model_uri: str | None = None
    registered_run_id: str | None = None
    serving_url: str | None = None
    serving_check: ServingCheck | None = None
    pool_failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "stage_seconds": self.stage_seconds,
            "stage_status": self.stage_status,
            "report": [r.model_dump(mode="json") for r in self.report_rows],
            "model_uri": self.model_uri,
            "registered_run_id": self.registered_run_id,
            "serving_url": self.serving_url,
            "serving_check": None if self.serving_check is None else vars(self.serving_check),
            "pool_failures": self.pool_failures,
        }

    def render(self) -> str:
        lines = ["", "== emm-ray run summary =="]
        lines += [
            f"  {stage:<10} {self.stage_status.get(stage, ''):<40} {seconds:7.1f} s"
            for stage, seconds in self.stage_seconds.items()
        ]
        if self.report_rows:
            lines += ["", render_markdown(self.report_rows, "Test AUC / logloss")]
        lines += [
            "",
            f"Reports:          {self.output_dir}/report.md, report.json",
            f"Registered model: {self.model_uri or 'not registered'}"
            + (f" (run {self.registered_run_id})" if self.registered_run_id else ""),
            f"Tracking URI:     {resolve_tracking_uri()}",
        ]
        if self.serving_url:
            lines.append(f"Serving URL:      {self.serving_url}/predict  (OpenAPI: /docs)")
        if self.serving_check:
            lines.append(
                f"Serving check:    {self.serving_check.records} records over HTTP, max |served - "
                f"model| = {self.serving_check.max_abs_difference:.2e}"
            )
        if self.pool_failures:
            lines.append(f"Pool failures:    {'; '.join(self.pool_failures)}")
        return "\n".join(lines)


class Pipeline:
    """Runs the configured stages in order; every stage's result is kept for later ones."""

    def __init__(
        self,
        config: PipelineConfig,
        output_dir: Path,
        force: bool = False,
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.console = console
        self.force = force
        self.summary = RunSummary(output_dir=output_dir)
        self.storage = storage.resolve(config.storage)
        self.prepared: PreparedDataset | None = None
        self.pool: PoolReport | None = None
        self.fused: FuseResult | None = None
        self.baseline_runs: dict[str, str] = {}
        self.search: SearchOutcome | None = None
        self.chosen_run_id: str | None = None

    def run(self) -> RunSummary:
        stages: dict[str, Callable[[], str]] = {
            "prepare": self._prepare,
            "pool": self._pool,
            "fuse": self._fuse,
            "baselines": self._baselines,
            "tune": self._tune,
            "evaluate": self._evaluate,
            "register": self._register,
            "serve": self._serve,
        }
        for name in self.config.stages:
            self._timed(name, stages[name])
        return self.summary

    def _timed(self, name: str, stage: Callable[[], str]) -> None:
        print(f"[emm-ray] stage {name} ...", flush=True)
        if self.console is not None:
            self.console.stage = name
        started = time.perf_counter()
        status = stage()
        elapsed = time.perf_counter() - started
        if self.console is not None:
            self.console.flush()
        self.summary.stage_seconds[name] = elapsed
        self.summary.stage_status[name] = status
        print(f"[emm-ray] stage {name} done in {elapsed:.1f} s: {status}", flush=True)

    def _require(self, value: T | None, stage: str, needs: str) -> T:
        if value is None:
            raise EmmError(f"stage {stage!r} needs stage {needs!r} in the same run's stages")
        return value

    def _prepare(self) -> str:
        self.prepared = self.config.prepared()
        rows = {s: self.prepared.num_rows(s) for s in ("train", "validation", "test")}
        return f"{self.prepared.schema.dataset} {rows}"

    def _pool(self) -> str:
        prepared = self._require(self.prepared, "pool", "prepare")
        self.pool = train_pool(
            self.config.pool_spec(), prepared, storage_path=self.storage, force=self.force
        )
        print(self.pool.table(), flush=True)
        self.summary.pool_failures = [f"{m.name}: {m.error}" for m in self.pool.failed]
        statuses = [m.status for m in self.pool.members]
        return ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))

    def _fuse(self) -> str:
        prepared = self._require(self.prepared, "fuse", "prepare")
        self._require(self.pool, "fuse", "pool")
        self.fused = fuse_pool(
            self.config.fuse, prepared, storage_path=self.storage, force=self.force
        )
        self.chosen_run_id = self.fused.run_id
        return f"{self.fused.status}, val AUC {self.fused.val_auc:.4f} (run {self.fused.run_id})"

    def _baselines(self) -> str:
        prepared = self._require(self.prepared, "baselines", "prepare")
        runs = train_baselines(
            self.config.baselines, prepared, storage_path=self.storage, force=self.force
        )
        self.baseline_runs = {r.name: r.run_id for r in runs}
        return ", ".join(f"{r.name} {r.status}" for r in runs)

    def _tune(self) -> str:
        prepared = self._require(self.prepared, "tune", "prepare")
        pool = self._require(self.pool, "tune", "pool")
        self.search = run_search(
            self.config.tune_spec(),
            data_dir=prepared.location,
            pool_runs=pool.run_ids(),
            model_name=self.config.model_name,
            storage_path=self.storage,
            alias=None,
            force=self.force,
        )
        self._adopt_search(self.search)
        if self.search.status == "skipped":
            return f"reused the search registered as version {self.search.version}"
        completed = sum(t.outcome == "completed" for t in self.search.trials)
        return (
            f"{len(self.search.trials)} trials ({completed} completed), best val AUC "
            f"{self.search.best_metrics.get('val_auc', float('nan')):.4f}"
        )

    def _adopt_search(self, search: SearchOutcome) -> None:
        """Prefer the search's best over the fuse stage's model when it validates better
        (both scores are the best epoch's mean validation AUC)."""
        searched = search.best_metrics.get("val_auc", float("-inf"))
        fused = self.fused.val_auc if self.fused is not None else float("-inf")
        if self.chosen_run_id is None or searched > fused:
            self.chosen_run_id = search.run_id

    def _evaluate(self) -> str:
        prepared = self._require(self.prepared, "evaluate", "prepare")
        run_id = self._require(self.chosen_run_id, "evaluate", "fuse")
        result = run_evaluation(
            run_id,
            self.summary.output_dir,
            prepared=prepared.location,
            baseline_runs=self.baseline_runs,
            spec=self.config.evaluate,
        )
        self.summary.report_rows = result.rows
        return f"{len({r.model for r in result.rows})} models scored (run {result.run_id})"

    def _register(self) -> str:
        run_id = self._require(self.chosen_run_id, "register", "fuse")
        client = tracking_client()
        name = self.config.model_name
        existing = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id]
        if existing:
            version = max(existing, key=lambda v: int(v.version))
            status = f"already registered as version {version.version}"
        else:
            metrics = {
                k: v for k, v in client.get_run(run_id).data.metrics.items() if k.startswith("val_")
            }
            version = register_artifact(
                client,
                name,
                run_id,
                MODEL_ARTIFACT_PATH,
                metrics=metrics,
                description="fused model chosen by pipelines/full.py (best validation AUC)",
            )
            status = f"registered as version {version.version}"
        client.set_registered_model_alias(name, ALIAS, version.version)
        self.summary.model_uri = f"models:/{name}@{ALIAS}"
        self.summary.registered_run_id = run_id
        return f"{status}, alias {ALIAS}"

    def _serve(self) -> str:
        model_uri = self._require(self.summary.model_uri, "serve", "register")
        prepared = self._require(self.prepared, "serve", "prepare")
        serve = self.config.serve
        settings = ServeSettings(
            model_uri=model_uri,
            tracking_uri=resolve_tracking_uri(),
            max_batch_size=serve.max_batch_size,
            max_records_per_request=serve.max_records_per_request,
        )
        url = deploy(
            settings,
            name=self.config.model_name,
            host=serve.host,
            port=serve.port,
            num_replicas=serve.num_replicas,
            num_cpus=serve.num_cpus,
            max_replicas_per_node=serve.max_replicas_per_node,
            proxy_location=serve.proxy_location,
        )
        self.summary.serving_url = url
        servable, _ = load_registered(model_uri, settings.resolved_tracking_uri())
        rows = load_split(prepared.path, "test").slice(slice(0, SERVING_CHECK_ROWS))
        self.summary.serving_check = check_deployment(url, servable, rows)
        return f"{url} answered {self.summary.serving_check.records} records"
