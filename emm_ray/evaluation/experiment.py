"""One YAML file describing a whole run (data, fusion, baselines, evaluation).

`configs/census.yaml` is one: the `fuse` and `evaluate` pipelines read their sections
from it, so every stage of a run agrees on the data and on the names it logs under.
Relative paths are taken from the current directory, as the pipelines' own options are.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from emm_ray.baselines.stage import BaselineSpec
from emm_ray.config import StrictModel, load_yaml_config
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.evaluation.stage import EvaluateSpec
from emm_ray.fusion.stage import FuseSpec


class ExperimentConfig(StrictModel):
    """Data, where it is prepared, and the fuse / baselines / evaluate settings."""

    data: DatasetConfig = DatasetConfig()
    prepared_dir: str = Field(
        "prepared/default",
        description="where prepared data lives: a directory, or an object store URI "
        "(s3://bucket/prefix) that every node of a cluster reads",
    )
    storage: str = Field(
        "ray_results",
        description="Ray Train / Tune checkpoints: a directory, or an object store URI on a "
        "cluster",
    )
    fuse: FuseSpec = FuseSpec()
    baselines: BaselineSpec = BaselineSpec()
    evaluate: EvaluateSpec = EvaluateSpec()

    def prepared(self) -> PreparedDataset:
        """The prepared data (prepared now unless already there for this config)."""
        return prepare_dataset(self.data, self.prepared_dir)


def load_experiment(path: Path | None) -> ExperimentConfig:
    """The config at `path`, or the built-in default (synthetic census) without one."""
    return ExperimentConfig() if path is None else load_yaml_config(path, ExperimentConfig)
