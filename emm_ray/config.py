"""Typed configs loaded from YAML: unknown keys and bad values fail with the file named."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from emm_ray.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config: a typo'd key is an error, not a silently ignored option."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def load_yaml_config(path: str | Path, config_type: type[ConfigT]) -> ConfigT:
    """Read `path` as YAML and validate it into `config_type`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    try:
        return config_type.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"config file {path}: {problems}") from exc
