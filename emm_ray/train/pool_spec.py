"""The pool spec: which single-task models to train, as a YAML file a user edits.

    name: census_small
    train: {epochs: 8, batch_size: 2048, lr: 0.002}     # defaults for every member
    resources: {cpu: 0.5, gpu: 0.25}                     # per member (per worker)
    members:
      - {name: mlp_income, architecture: mlp, task: income, hparams: {hidden: [128, 64]}}
      - {name: dcn_married, architecture: dcn_v2, task: never_married, train: {lr: 0.001}}

Everything that can be checked without data is checked on load: architecture names,
hyperparameter names and types (by the zoo's own validation), training overrides, unique
member names. Task names are checked against the dataset's schema by `check_tasks`
before any training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from emm_ray.config import StrictModel, load_yaml_config
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError
from emm_ray.models.base import resolved_hyperparameters
from emm_ray.models.registry import parse_hyperparameters
from emm_ray.train.loop import TrainConfig
from emm_ray.train.ray_job import DataMode, WorkerResources

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class MemberSpec(StrictModel):
    """One pool member: a single-task model of a zoo architecture."""

    name: str = Field(pattern=NAME_PATTERN)
    architecture: str
    task: str
    hparams: dict[str, Any] = {}
    train: dict[str, Any] = {}
    resources: WorkerResources | None = None

    @model_validator(mode="after")
    def _known_architecture_and_hparams(self) -> MemberSpec:
        try:
            parse_hyperparameters(self.architecture, self.hparams)
        except ConfigError as exc:
            raise ValueError(f"member {self.name!r}: {exc}") from None
        return self

    def full_hparams(self) -> dict[str, Any]:
        """Hyperparameters with the architecture's defaults filled in (what gets built)."""
        return resolved_hyperparameters(parse_hyperparameters(self.architecture, self.hparams))


class PoolSpec(StrictModel):
    """A named pool: shared training defaults and resources, and its members."""

    name: str = Field(pattern=NAME_PATTERN)
    experiment: str = "emm-pool"
    train: TrainConfig = TrainConfig()
    resources: WorkerResources = WorkerResources()
    data_mode: DataMode = "auto"
    max_concurrent: int | None = Field(None, ge=1)
    members: tuple[MemberSpec, ...] = Field(min_length=1)

    @field_validator("members")
    @classmethod
    def _unique_names(cls, members: tuple[MemberSpec, ...]) -> tuple[MemberSpec, ...]:
        names = [m.name for m in members]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"member names must be unique; repeated: {duplicated}")
        return members

    @model_validator(mode="after")
    def _valid_train_overrides(self) -> PoolSpec:
        for member in self.members:
            try:
                self.member_train(member)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    def member_train(self, member: MemberSpec) -> TrainConfig:
        """The pool's training defaults with the member's overrides applied."""
        merged = {**self.train.model_dump(), **member.train}
        try:
            return TrainConfig.model_validate(merged)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err['input']!r})"
                for err in exc.errors()
            )
            raise ConfigError(f"member {member.name!r}: bad train override: {problems}") from None

    def member_resources(self, member: MemberSpec) -> WorkerResources:
        return member.resources or self.resources

    def member(self, name: str) -> MemberSpec:
        for member in self.members:
            if member.name == name:
                return member
        raise ConfigError(
            f"pool {self.name!r} has no member {name!r}; members: {[m.name for m in self.members]}"
        )

    def check_tasks(self, schema: FeatureSchema) -> None:
        """Every member's task must be one of the dataset's; one error lists all that are not."""
        unknown = [
            f"{m.name} -> {m.task!r}" for m in self.members if m.task not in schema.task_names
        ]
        if unknown:
            raise ConfigError(
                f"pool {self.name!r}: unknown task for member(s) {', '.join(unknown)}; "
                f"dataset {schema.dataset!r} has tasks {schema.task_names}"
            )


def load_pool_spec(path: str | Path) -> PoolSpec:
    """Read and validate a pool YAML; errors name the file and the member at fault."""
    return load_yaml_config(path, PoolSpec)
