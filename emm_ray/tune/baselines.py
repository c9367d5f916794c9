"""Tune an end-to-end baseline's main hyperparameters with Ray Tune, under a fixed budget.

A fair comparison gives the hand-designed baselines the search the fusion gets: the same
number of trials and the same epochs per trial (ASHA's `max_t`), from a YAML file
(`tune_spaces/baselines/default.yaml`). Options:

- `lr`, `embed_dim`, `dropout`: every baseline;
- `width`: the first hidden width of the baseline's main MLPs (its experts, bottom or
  towers), each later layer half the one before, keeping the default depth;
- per baseline (`per_baseline`): its own structure, e.g. MMoE's `experts`, PLE's
  `specific_experts` / `shared_experts`.

Each trial trains in its Tune worker with the one training loop, on the prepared splits
read into memory, and reports the mean validation AUC after every epoch, so ASHA can stop
it early. The search returns the best trial's hyperparameters (every value it can sample
is validated against the baseline's own hyperparameter model when the file is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from emm_ray import storage
from emm_ray.baselines import BASELINES, build_baseline
from emm_ray.baselines.common import parse_hyperparameters
from emm_ray.config import StrictModel, load_yaml_config
from emm_ray.data.streaming import load_schema, load_split
from emm_ray.errors import ConfigError, EmmError
from emm_ray.train.loop import EpochEnd, TensorBatches, TrainConfig, fit, seed_everything
from emm_ray.tune.space import AshaSettings, Choice, Option, Scalar

METRIC = "val_auc"
# The hyperparameter fields `width` sets, per baseline, and how many layers each has.
WIDTH_FIELDS: dict[str, tuple[str, ...]] = {
    "shared_bottom": ("bottom",),
    "mmoe": ("expert_hidden",),
    "ple": ("expert_hidden",),
    "esmm": ("tower",),
    "aitm": ("tower",),
}
COMMON_OPTIONS = ("lr", "embed_dim", "dropout", "width")


class BaselineSearchSpec(StrictModel):
    """One baseline search: what varies, the trial budget, how each trial trains."""

    search: dict[str, Option] = Field(default_factory=dict)
    per_baseline: dict[str, dict[str, Option]] = Field(default_factory=dict)
    num_samples: int = Field(4, ge=1)
    max_concurrent: int = Field(2, ge=1)
    asha: AshaSettings = Field(default_factory=AshaSettings)
    batch_size: int = Field(2048, ge=1)
    seed: int = 0

    @field_validator("search")
    @classmethod
    def _common_options(cls, value: dict[str, Option]) -> dict[str, Option]:
        unknown = sorted(set(value) - set(COMMON_OPTIONS))
        if unknown:
            raise ValueError(f"unknown options {unknown}; choose from {list(COMMON_OPTIONS)}")
        return value

    @field_validator("per_baseline")
    @classmethod
    def _known_baselines(cls, value: dict[str, dict[str, Option]]) -> dict[str, dict[str, Option]]:
        for name, options in value.items():
            if name not in BASELINES:
                raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
            fields = BASELINES[name].Hyperparameters.model_fields
            unknown = sorted(set(options) - set(fields))
            if unknown:
                raise ValueError(f"{name}: unknown hyperparameters {unknown}")
        return value

    def space(self, name: str) -> dict[str, Any]:
        """Tune's `param_space` for baseline `name`, every reachable value checked."""
        options = {**self.search, **self.per_baseline.get(name, {})}
        for option, value in options.items():
            for candidate in _values(value):
                if option != "lr":
                    trial_hparams(name, {option: candidate}, {})
        return {k: v if isinstance(v, Scalar) else v.to_tune() for k, v in options.items()}

    @property
    def budget(self) -> tuple[int, int]:
        """(trials, epochs per trial at most): what a fair comparison holds equal."""
        return self.num_samples, self.asha.max_t


def load_baseline_search(path: str | Path) -> BaselineSearchSpec:
    return load_yaml_config(path, BaselineSearchSpec)


def trial_hparams(name: str, sampled: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """The full hyperparameters of baseline `name` for a trial's sampled options."""
    kind = BASELINES[name].Hyperparameters
    values = {**fixed, **{k: v for k, v in sampled.items() if k not in ("lr", "width")}}
    if "width" in sampled:
        width = int(sampled["width"])
        for field in WIDTH_FIELDS[name]:
            depth = len(kind.model_fields[field].default)
            values[field] = tuple(max(1, width >> i) for i in range(depth))
    try:
        return parse_hyperparameters(name, kind, values).model_dump(mode="json")
    except ConfigError as exc:
        raise ConfigError(f"search option values {sampled}: {exc}") from None


@dataclass(frozen=True)
class TrialContext:
    name: str
    data_dir: str
    fixed: dict[str, Any]
    train: TrainConfig


def baseline_trial(config: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: train the sampled baseline, report mean validation AUC per epoch."""
    schema = load_schema(context.data_dir)
    train_data = load_split(context.data_dir, "train")
    validation = load_split(context.data_dir, "validation")
    hparams = trial_hparams(context.name, config, context.fixed)
    settings = context.train.model_copy(update={"lr": config.get("lr", context.train.lr)})
    seed_everything(settings.seed)
    model = build_baseline(context.name, schema, **hparams)

    def report(end: EpochEnd) -> None:
        tune.report({METRIC: end.metrics["val_auc"], "epoch": end.metrics["epoch"]})

    fit(
        model,
        TensorBatches(train_data, settings.batch_size, shuffle=True, seed=settings.seed),
        TensorBatches(validation, settings.eval_batch_size_on("cpu")),
        model.task_indices,
        settings,
        task_names=model.task_names,
        on_epoch=report,
    )


@dataclass(frozen=True)
class BaselineSearchResult:
    name: str
    hparams: dict[str, Any]
    lr: float
    val_auc: float
    trials: int


def search_baseline(
    name: str,
    spec: BaselineSearchSpec,
    *,
    data_dir: str | Path,
    storage_path: str | Path,
    fixed: dict[str, Any] | None = None,
    base_lr: float = 2e-3,
    threads: int = 1,
) -> BaselineSearchResult:
    """Search baseline `name` on the prepared data in `data_dir` (Ray must be running).

    `fixed` holds hyperparameters that are not searched (e.g. ESMM's `funnel`, which the
    data decides); `base_lr` is the learning rate when `lr` is not searched.
    """
    train = TrainConfig(
        epochs=spec.asha.max_t,
        batch_size=spec.batch_size,
        lr=base_lr,
        patience=None,
        seed=spec.seed,
        num_threads=threads,
    )
    context = TrialContext(name, storage.resolve(data_dir), dict(fixed or {}), train)
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(baseline_trial, context=context), {"CPU": threads}
        ),
        param_space=spec.space(name),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=spec.num_samples,
            search_alg=BasicVariantGenerator(
                random_state=spec.seed, max_concurrent=spec.max_concurrent
            ),
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=spec.asha.max_t,
                grace_period=spec.asha.grace_period,
                reduction_factor=spec.asha.reduction_factor,
            ),
        ),
        run_config=tune.RunConfig(
            name=f"baseline-search-{name}",
            storage_path=storage.resolve(storage_path),
            verbose=0,
        ),
    )
    results = [r for r in tuner.fit() if r.error is None and r.metrics]
    if not results:
        raise EmmError(f"no trial of the {name} search reported a validation AUC")
    best = max(results, key=lambda r: r.metrics[METRIC])
    return BaselineSearchResult(
        name=name,
        hparams=trial_hparams(name, best.config, context.fixed),
        lr=float(best.config.get("lr", base_lr)),
        val_auc=float(best.metrics[METRIC]),
        trials=len(results),
    )


def _values(option: Any) -> list[Any]:
    if isinstance(option, Choice):
        return list(option.values)
    if isinstance(option, Scalar):
        return [option]
    return [option.low, option.high]
