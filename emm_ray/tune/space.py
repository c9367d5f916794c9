"""Search spaces for the fusion architecture, as YAML files a user edits (tune_spaces/*.yaml).

Each searchable option is either a fixed value or a distribution written out by name:

    lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    levels: {type: choice, values: [1, 2, 3]}
    top_k: {type: randint, low: 1, high: 3}      # both bounds included

Every value a distribution can produce is checked against the option's own validation
(`FusionConfig`, `TrainConfig`) when the file is loaded, so a typo, an empty range or a
value the fusion model would refuse fails before a single trial starts, with the file
and the key named.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from ray import tune

from emm_ray.config import StrictModel, load_yaml_config
from emm_ray.fusion.config import FusionConfig
from emm_ray.train.loop import TrainConfig

Scalar = int | float | str
StrictScalar = StrictInt | StrictFloat | StrictStr


class Choice(StrictModel):
    """One of a list of values."""

    type: Literal["choice"]
    values: tuple[StrictScalar, ...] = Field(min_length=1)

    def to_tune(self) -> Any:
        return tune.choice(list(self.values))


class _Range(StrictModel):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self


class Uniform(_Range):
    """A float drawn uniformly from [low, high]."""

    type: Literal["uniform"]

    def to_tune(self) -> Any:
        return tune.uniform(self.low, self.high)


class LogUniform(_Range):
    """A float whose logarithm is uniform: for scale parameters such as the learning rate."""

    type: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self) -> LogUniform:
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self

    def to_tune(self) -> Any:
        return tune.loguniform(self.low, self.high)


class RandInt(StrictModel):
    """An integer drawn uniformly from low..high, both included."""

    type: Literal["randint"]
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> RandInt:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self

    def to_tune(self) -> Any:
        return tune.randint(self.low, self.high + 1)


Fixed = Annotated[StrictScalar, Tag("fixed")]
Option = Annotated[
    Fixed
    | Annotated[Choice, Tag("choice")]
    | Annotated[Uniform, Tag("uniform")]
    | Annotated[LogUniform, Tag("loguniform")]
    | Annotated[RandInt, Tag("randint")],
    Discriminator(
        lambda v: v.get("type") if isinstance(v, dict) else getattr(v, "type", "fixed"),
        custom_error_type="unknown_distribution",
        custom_error_message="a distribution needs type: choice, uniform, loguniform or randint",
    ),
]

FUSION_OPTIONS = ("variant", "levels", "top_k", "d_model", "heads", "dropout")
ALLOWED_TYPES: dict[str, tuple[str, ...]] = {
    "variant": ("choice",),
    "levels": ("choice", "randint"),
    "experts_per_task": ("choice", "randint"),
    "top_k": ("choice", "randint"),
    "d_model": ("choice",),
    "heads": ("choice",),
    "dropout": ("choice", "uniform"),
    "lr": ("choice", "uniform", "loguniform"),
    "weight_decay": ("choice", "uniform", "loguniform"),
}


class SearchSpace(StrictModel):
    """The options a trial may vary; an option left out keeps its `FusionConfig` default.

    `experts_per_task` is how many pool members of each task (the best by validation
    AUC) the fused model may draw on; `None` keeps every member.
    """

    variant: Option | None = None
    levels: Option | None = None
    experts_per_task: Option | None = None
    top_k: Option | None = None
    d_model: Option | None = None
    heads: Option | None = None
    dropout: Option | None = None
    lr: Option | None = None
    weight_decay: Option | None = None

    @field_validator("*")
    @classmethod
    def _values_are_valid(cls, value: Any, info: ValidationInfo) -> Any:
        """The distribution must suit the option, and every value it can take must pass
        the option's own validation."""
        kind = getattr(value, "type", None)
        if kind is not None and kind not in ALLOWED_TYPES[info.field_name]:
            raise ValueError(
                f"{kind} is not available for {info.field_name}; use a fixed value or one of "
                f"{', '.join(ALLOWED_TYPES[info.field_name])}"
            )
        if isinstance(value, Choice):
            values = tuple(_check_option(info.field_name, v) for v in value.values)
            return value.model_copy(update={"values": values})
        if isinstance(value, Scalar):
            return _check_option(info.field_name, value)
        if value is not None:
            for bound in (value.low, value.high):
                _check_option(info.field_name, bound)
        return value

    @model_validator(mode="after")
    def _widths_split_into_heads(self) -> SearchSpace:
        defaults = FusionConfig()
        variants = _values(self.variant, defaults.variant)
        widths = _values(self.d_model, defaults.d_model)
        heads = _values(self.heads, defaults.heads)
        for variant, width, head in itertools.product(variants, widths, heads):
            try:
                FusionConfig(variant=variant, d_model=width, heads=head)
            except ValidationError as exc:
                raise ValueError(
                    f"d_model={width} with heads={head} (variant {variant!r}) is not a valid "
                    f"fusion model: {_first_message(exc)}"
                ) from None
        return self

    def param_space(self) -> dict[str, Any]:
        """Tune's `param_space`: distributions as Tune samplers, fixed values as they are."""
        space: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None:
                space[name] = value if isinstance(value, Scalar) else value.to_tune()
        return space


class AshaSettings(StrictModel):
    """ASHA early stopping; `max_t` is also every trial's epoch budget."""

    max_t: int = Field(4, ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)

    @model_validator(mode="after")
    def _grace_within_budget(self) -> AshaSettings:
        if self.grace_period > self.max_t:
            raise ValueError(
                f"grace_period ({self.grace_period}) must not exceed max_t ({self.max_t})"
            )
        return self


class TrialSettings(StrictModel):
    """How each trial trains: fixed across trials so their scores compare.

    Workers take half a CPU by default: trials stream through Ray Data, whose read tasks
    need CPU too; concurrent whole-CPU workers filling a 2-CPU node wait forever.
    """

    batch_size: int = Field(1024, ge=1)
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)
    patience: int | None = Field(None, ge=1)
    seed: int = 0


class TuneSpec(StrictModel):
    """One search: what varies, how many trials, how many at once, when to stop early."""

    search: SearchSpace = Field(default_factory=SearchSpace)
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    asha: AshaSettings = Field(default_factory=AshaSettings)
    trial: TrialSettings = Field(default_factory=TrialSettings)


def load_tune_spec(path: str | Path) -> TuneSpec:
    """Read and validate a search-space file; errors are `ConfigError`s naming file and key."""
    return load_yaml_config(path, TuneSpec)


def _values(option: Any, default: Scalar) -> list[Scalar]:
    """The values a fixed or choice option can take (`default` when left out)."""
    if option is None:
        return [default]
    return list(option.values) if isinstance(option, Choice) else [option]


def _check_option(name: str, value: Scalar) -> Scalar:
    """`value` as the option's own field validates it; cross-field rules are checked later."""
    if name == "experts_per_task":
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"experts_per_task must be an integer >= 1, got {value!r}")
        return value
    owner = FusionConfig if name in FUSION_OPTIONS else TrainConfig
    field = owner.model_fields[name]
    try:
        return TypeAdapter(Annotated[field.annotation, field]).validate_python(value)
    except ValidationError as exc:
        raise ValueError(f"value {value!r} is not allowed: {_first_message(exc)}") from None


def _first_message(exc: ValidationError) -> str:
    return exc.errors()[0]["msg"]
