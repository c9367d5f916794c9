"""The run config of `pipelines/full.py`: an experiment plus pool, search and serving.

Everything is checked before any stage starts: unknown keys or stages, a pool spec or
search space that is missing or invalid, real data files that are not there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from emm_ray.config import StrictModel, load_yaml_config
from emm_ray.data.prepare import DatasetConfig
from emm_ray.errors import ConfigError
from emm_ray.evaluation.experiment import ExperimentConfig
from emm_ray.serve.settings import ProxyLocation
from emm_ray.train.pool_spec import PoolSpec, load_pool_spec
from emm_ray.tune.space import TuneSpec, load_tune_spec

REPO_ROOT = Path(__file__).resolve().parents[2]

Stage = Literal["prepare", "pool", "fuse", "baselines", "tune", "evaluate", "register", "serve"]
STAGES: tuple[Stage, ...] = (
    "prepare",
    "pool",
    "fuse",
    "baselines",
    "tune",
    "evaluate",
    "register",
    "serve",
)


class ServeSection(StrictModel):
    """How the registered model is served at the end of the run."""

    host: str = "127.0.0.1"
    port: int = Field(8321, ge=1, le=65535)
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0)
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="1 puts every replica on its own node (survives a node loss)"
    )
    proxy_location: ProxyLocation = Field(
        "EveryNode",
        description="where Serve runs HTTP proxies: EveryNode (behind a load balancer) or "
        "HeadOnly (one entry point; also for several nodes simulated on one machine, "
        "whose proxies would share one port). With HeadOnly, start the cluster with "
        "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0, or the proxy sends every request to "
        "the head's own replica",
    )
    max_batch_size: int = Field(256, ge=1)
    max_records_per_request: int = Field(256, ge=1)
    keep_alive: bool = Field(
        False, description="block after deploying (Ctrl-C stops); else smoke-test and return"
    )


class PipelineConfig(ExperimentConfig):
    """One YAML for the whole run; relative paths are taken from the current directory,
    falling back to the repository (so the built-in configs work from anywhere)."""

    pool: Path = Path("configs/pools/census_small.yaml")
    tune: Path = Path("tune_spaces/default.yaml")
    model_name: str = Field(
        "emm-census-synthetic",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="registered model name; unset: emm-<dataset>[-<T>tasks][-synthetic], so "
        "runs on other data do not share a name (a name holds one data layout)",
    )
    stages: tuple[Stage, ...] = STAGES
    serve: ServeSection = ServeSection()

    @model_validator(mode="before")
    @classmethod
    def _model_name_from_data(cls, values: Any) -> Any:
        if not isinstance(values, dict) or "model_name" in values:
            return values
        data = values.get("data", {})
        if isinstance(data, DatasetConfig):
            name, source, tasks = data.name, data.source, data.tasks
        elif isinstance(data, dict):
            name, source = data.get("name", "census"), data.get("source", "synthetic")
            tasks = data.get("tasks")
        else:
            return values  # the field's own validation reports it
        chosen = f"-{len(tasks)}tasks" if isinstance(tasks, list | tuple) else ""
        suffix = "-synthetic" if source == "synthetic" else ""
        return {**values, "model_name": f"emm-{str(name).replace('_', '-')}{chosen}{suffix}"}

    def pool_spec(self) -> PoolSpec:
        return load_pool_spec(resolve_path(self.pool, "pool"))

    def tune_spec(self) -> TuneSpec:
        return load_tune_spec(resolve_path(self.tune, "tune"))

    def check(self) -> None:
        """Fail before any work: load every referenced file, check real data exists."""
        self.pool_spec()
        if "tune" in self.stages:
            self.tune_spec()
        missing = [f"{role}: {p}" for role, p in self.data.raw_files().items() if not p.is_file()]
        if missing:
            raise ConfigError(f"data files not found ({', '.join(missing)}); set EMM_DATA_DIR")


def resolve_path(path: Path, key: str) -> Path:
    """`path` as given if it exists, else relative to the repository; an error names `key`."""
    for candidate in (path, REPO_ROOT / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{key}: file {path} not found (looked in . and {REPO_ROOT})")


def load_pipeline_config(path: Path | None, stages: str | None = None) -> PipelineConfig:
    """The config at `path` (or the built-in default: synthetic census, small pool), with
    `stages` (comma-separated) replacing the config's own when given."""
    config = PipelineConfig() if path is None else load_yaml_config(path, PipelineConfig)
    if stages is not None:
        chosen = [s for s in stages.split(",") if s]
        unknown = [s for s in chosen if s not in STAGES]
        if unknown or not chosen:
            raise ConfigError(f"--stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
        config = config.model_copy(update={"stages": tuple(chosen)})
    config.check()
    return config
