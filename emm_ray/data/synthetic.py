"""Seeded synthetic data in the raw layout of each real dataset, with planted shared structure.

Why: the real Ali-CCP/AliExpress files here are 100-row samples and the census test
split is held back, so the default pipeline runs on generated data that has the same
columns and types (`DatasetLayout.raw_schema`), realistic cardinalities and label
rates, and, what matters for EMM, signal that tasks share.

How rows are made (all vectorised numpy):
- each sparse field draws Zipf-distributed categories (`"0"` is the most frequent);
  each dense field draws from a marginal shaped like the real column
  (zero-inflated log-normal money, spiky integers, [0, 1] normalised values);
- every category and every (transformed, standardised) dense value pushes a row's
  latent vector `z`: 4 dims (one more than the tasks, if that is more) are *shared*
  by all tasks, and each task also owns 2 *private* dims; a task's logit is a
  task-specific mix of the shared dims, its private dims and a shared pairwise
  interaction (something FM/cross layers can find), scaled to a fixed spread and
  offset to hit the target positive rate;
- funnel datasets (`ctr`/`ctcvr`) draw a click, then a conversion among clicks, so
  `ctcvr <= ctr` row by row as in the real logs;
- census takes the same task choice as the real adapter (`tasks`): the features are
  the real layout's for those tasks, each label hits its real positive rate.

Rows are produced in fixed blocks of `BLOCK_ROWS`, block `b` from its own seed, so row
`i` is the same whatever chunk size a caller asks for and no more than one block plus
one chunk is ever in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emm_ray.data.adapters import ali_ccp, aliexpress, census, get_adapter
from emm_ray.data.layout import DatasetLayout
from emm_ray.errors import ConfigError

BLOCK_ROWS = 1 << 14
SHARED_DIMS = 4
PRIVATE_DIMS = 2
SHARED_CORRELATION = 0.75  # tasks' shared-latent directions have cosine 0.75**2
EFFECT_BUCKETS = 4096  # categories of huge id fields share effects modulo this
LOGIT_STD = 2.5  # spread of each task's logit: a few thousand rows give AUCs well above 0.5
CALIBRATION_ROWS = 20_000
SYNTHETIC_SUFFIX = "-synthetic"


@dataclass(frozen=True)
class ZeroInflatedLogNormal:
    """0 with probability `1 - p_nonzero`, else `round(exp(N(mu, sigma)))`: census money."""

    p_nonzero: float
    mu: float
    sigma: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        value = np.round(np.exp(rng.normal(self.mu, self.sigma, n)))
        return np.where(rng.random(n) < self.p_nonzero, value, 0.0)


@dataclass(frozen=True)
class Discrete:
    """Integer values with given probabilities: ages, weeks worked, employer size."""

    values: tuple[int, ...]
    probs: tuple[float, ...]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        cdf = np.cumsum(self.probs) / np.sum(self.probs)
        index = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)
        return np.asarray(self.values, dtype=np.float64)[index]


@dataclass(frozen=True)
class UnitInterval:
    """0 with probability `p_zero`, else Kumaraswamy(a, b) (a cheap Beta look-alike) to 4
    decimals: the pre-normalised features of Ali-CCP and AliExpress."""

    p_zero: float
    a: float = 2.0
    b: float = 5.0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        value = np.round((1.0 - (1.0 - rng.random(n)) ** (1.0 / self.b)) ** (1.0 / self.a), 4)
        return np.where(rng.random(n) < self.p_zero, 0.0, value)


DenseDist = ZeroInflatedLogNormal | Discrete | UnitInterval
Regime = Literal["planted", "published"]


@dataclass(frozen=True)
class PublishedRegime:
    """Label rates and AUC levels reported for the real dataset (`regime: published`).

    `oracle_aucs` is what a model that knew the generating probabilities would score:
    trained models land below it, as real models land below what the logs allow.
    """

    rates: tuple[float, ...]
    oracle_aucs: tuple[float, ...]
    source: str


@dataclass(frozen=True)
class TaskChoice:
    """How a dataset with a choice of tasks looks for a given choice: layout and rates."""

    layout: Callable[[tuple[str, ...]], DatasetLayout]
    rates: dict[str, float]


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate for one dataset: per-field cardinalities and marginals, label rates.

    `rates` are the target positive rates per task; with `funnel`, the second task is
    the first AND a conversion (its rate is the joint rate, e.g. CTCVR). With a
    `choice`, `cardinalities` and `dense` cover every field some choice of tasks keeps.
    """

    layout: DatasetLayout
    cardinalities: dict[str, int]
    dense: dict[str, DenseDist]
    rates: tuple[float, ...]
    funnel: bool
    zipf: float
    notes: str = field(default="")
    choice: TaskChoice | None = None
    published: PublishedRegime | None = None

    def for_tasks(self, tasks: tuple[str, ...]) -> SyntheticSpec:
        """This spec with the chosen tasks (names already checked by the adapter)."""
        if self.choice is None:
            raise ConfigError(f"tasks: synthetic {self.layout.dataset!r} has a fixed task set")
        layout = self.choice.layout(tasks).renamed(self.layout.dataset)
        return replace(self, layout=layout, rates=tuple(self.choice.rates[t] for t in tasks))


def _weeks() -> Discrete:
    values = tuple(range(53))
    probs = [0.17 / 51] * 53
    probs[0], probs[52] = 0.48, 0.35
    return Discrete(values, tuple(probs))


# marital_stat is a feature whenever never_married is not a task
_CENSUS_CARDINALITIES = dict(
    zip(
        census.LAYOUT.sparse,
        (9, 52, 47, 17, 3, 24, 15, 5, 10, 2, 3, 6, 8, 6, 6, 51, 38, 8, 10, 9, 10, 3, 4, 5,
         43, 43, 43, 5, 3, 3, 3, 2),
        strict=True,
    )
) | {"marital_stat": 7}  # fmt: skip
_CENSUS_RATES = {
    "income": 0.062,
    "never_married": 0.4335,
    "education_bachelors": 0.1477,
    "worked_all_year": 0.3524,
    "capital_income": 0.1325,
    "foreign_born": 0.1129,
    "full_time": 0.2042,
    "self_employed": 0.0587,
    "school_enrolled": 0.0631,
}

_ALI_CCP_CARDINALITIES = dict(
    zip(
        ali_ccp.RECHUB_SPARSE,
        (238_000, 98, 14, 3, 8, 4, 4, 3, 5, 467_000, 6_900, 264_000, 80_000, 106_000, 5_900,
         105_000, 52_000, 37_000, 4, 5_900, 106_000, 54_000, 32_000),
        strict=True,
    )
)  # fmt: skip

_ALIEXPRESS_CARDINALITIES = dict(
    zip(
        aliexpress.SPARSE,
        (11, 4, 7, 2, 25, 8, 100, 12, 10, 2, 2, 2, 2, 2, 2, 2),
        strict=True,
    )
)

SPECS: dict[str, SyntheticSpec] = {
    "census": SyntheticSpec(
        layout=census.LAYOUT.renamed("census" + SYNTHETIC_SUFFIX),
        cardinalities=_CENSUS_CARDINALITIES,
        dense={
            "age": Discrete(
                tuple(range(91)),
                tuple(float(np.exp(-((a - 33.0) ** 2) / 900.0)) + 0.25 for a in range(91)),
            ),
            "wage_per_hour": ZeroInflatedLogNormal(0.057, 6.6, 0.6),
            "capital_gains": ZeroInflatedLogNormal(0.037, 8.3, 1.2),
            "capital_losses": ZeroInflatedLogNormal(0.02, 7.5, 0.3),
            "dividends_from_stocks": ZeroInflatedLogNormal(0.106, 6.0, 1.6),
            "num_persons_worked_for_employer": Discrete(
                (0, 1, 2, 3, 4, 5, 6), (0.48, 0.12, 0.05, 0.05, 0.07, 0.05, 0.18)
            ),
            "weeks_worked_in_year": _weeks(),
        },
        rates=(0.062, 0.4335),
        funnel=False,
        zipf=1.5,
        notes="cardinalities and label rates of the real census-income.data",
        choice=TaskChoice(census.task_layout, _CENSUS_RATES),
    ),
    "ali_ccp": SyntheticSpec(
        layout=ali_ccp.RECHUB_LAYOUT.renamed("ali_ccp" + SYNTHETIC_SUFFIX),
        cardinalities=_ALI_CCP_CARDINALITIES,
        dense={name: UnitInterval(0.5) for name in ali_ccp.RECHUB_DENSE},
        rates=(0.04, 0.006),
        funnel=True,
        zipf=1.1,
        notes=(
            "cardinalities near the AITM-preprocessed vocabularies; CTR as in ESMM's data "
            "(4%), CTCVR raised from the real ~0.02% to 0.6% so small runs have positives"
        ),
        published=PublishedRegime(
            rates=(0.0405, 0.00021),
            oracle_aucs=(0.62, 0.65),
            source="Ali-CCP as published (ESMM): 84M impressions, CTR 4.05%, CTCVR 0.021%; "
            "AUC levels of published CTR/CTCVR models (about .62/.65)",
        ),
    ),
    "aliexpress": SyntheticSpec(
        layout=aliexpress.LAYOUT.renamed("aliexpress" + SYNTHETIC_SUFFIX),
        cardinalities=_ALIEXPRESS_CARDINALITIES,
        dense={name: UnitInterval(0.4, 1.5, 5.0) for name in aliexpress.DENSE},
        rates=(0.025, 0.003),
        funnel=True,
        zipf=1.2,
        notes=(
            "cardinalities sized from the shared sample's id ranges; CTR 2.5% as in the "
            "real data, CTCVR 0.3% (real: well under 0.1%) so small runs have positives"
        ),
        published=PublishedRegime(
            rates=(0.025, 0.0005),
            oracle_aucs=(0.72, 0.87),
            source="AliExpress: CTR 2.5%, CTCVR 0.05% (an assumed value: the real rate is "
            "well under 0.1%, no exact figure at hand); AUC levels of published CTR/CTCVR "
            "models (about .72/.87)",
        ),
    ),
}


def _spec(dataset: str, tasks: Sequence[str] | None, regime: Regime) -> SyntheticSpec:
    try:
        spec = SPECS[dataset]
    except KeyError:
        raise ConfigError(
            f"no synthetic generator for dataset {dataset!r}; known: {sorted(SPECS)}"
        ) from None
    chosen = get_adapter(dataset).check_tasks(tasks)
    spec = spec if chosen is None else spec.for_tasks(chosen)
    if regime == "planted":
        return spec
    if spec.published is None:
        known = sorted(name for name, s in SPECS.items() if s.published is not None)
        raise ConfigError(
            f"regime: no published regime for synthetic {dataset!r}; datasets with one: {known}"
        )
    return replace(spec, rates=spec.published.rates, notes=spec.published.source)


class SyntheticGenerator:
    """Deterministic rows for `dataset` from `seed`; see the module docstring for the model.

    `tasks` chooses the tasks as `DatasetConfig.tasks` does (None: the default tasks).
    `regime: published` replaces the planted regime's fixed logit spread and easy label
    rates by the real dataset's rates and AUC levels (`PublishedRegime`).
    """

    def __init__(
        self,
        dataset: str,
        seed: int = 0,
        tasks: Sequence[str] | None = None,
        regime: Regime = "planted",
    ) -> None:
        self.spec = _spec(dataset, tasks, regime)
        self.regime = regime
        self.seed = seed
        self.layout = self.spec.layout
        num_tasks = len(self.layout.tasks)
        self._shared_dims = max(SHARED_DIMS, num_tasks + 1)
        self._latent_dims = self._shared_dims + num_tasks * PRIVATE_DIMS
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
        cards = [self.spec.cardinalities[n] for n in self.layout.sparse]
        self._categories = [_ZipfCategories(c, self.spec.zipf) for c in cards]
        strength = rng.gamma(2.0, 1.0, len(cards) + len(self.layout.dense))
        strength /= np.sqrt(np.sum(strength**2))
        buckets = [min(c, EFFECT_BUCKETS) for c in cards]
        self._effects = np.concatenate(
            [
                rng.normal(0.0, s, (b, self._latent_dims))
                for b, s in zip(buckets, strength, strict=False)
            ]
        ).astype(np.float32)
        self._effect_buckets = np.asarray(buckets, dtype=np.int32)
        self._effect_offsets = np.cumsum([0, *buckets[:-1]]).astype(np.int32)
        self._dense_weights = rng.normal(0.0, 1.0, (len(self.layout.dense), self._latent_dims))
        self._dense_weights *= strength[len(cards) :, None]
        self._task_weights = self._mix_weights(rng, num_tasks, self._shared_dims)

        calibration = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
        sparse, dense = self._features(calibration, CALIBRATION_ROWS)
        visible = self._visible(dense)
        self._dense_mean, self._dense_std = visible.mean(0), visible.std(0) + 1e-9
        z = self._raw_latent(sparse, dense)
        self._z_mean, self._z_std = z.mean(0), z.std(0) + 1e-9
        scores = self._scores((z - self._z_mean) / self._z_std)
        if self.spec.published is not None and regime == "published":
            self._scale, self._bias = self._calibrate_aucs(scores, self.spec.published.oracle_aucs)
        else:
            self._scale = LOGIT_STD / scores.std(0)
            self._bias = self._calibrate(scores * self._scale)

    def describe(self, rows: int) -> dict[str, object]:
        """What generated a dataset, for its `split.json`."""
        return {
            "generator": "emm_ray.data.synthetic",
            "dataset": self.layout.dataset,
            "seed": self.seed,
            "regime": self.regime,
            "rows": rows,
            "target_positive_rates": dict(
                zip(self.layout.task_names, self.spec.rates, strict=True)
            ),
            "notes": self.spec.notes,
        }

    def iter_chunks(self, rows: int, chunk_rows: int = 100_000) -> Iterator[pa.Table]:
        """Rows `[0, rows)` as raw tables of at most `chunk_rows` rows."""
        if rows < 0 or chunk_rows <= 0:
            raise ValueError(f"need rows >= 0 and chunk_rows > 0, got {rows}, {chunk_rows}")
        cached: tuple[int, pa.Table] | None = None
        for start in range(0, rows, chunk_rows):
            stop = min(start + chunk_rows, rows)
            parts = []
            for block in range(start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS + 1):
                if cached is None or cached[0] != block:
                    cached = (block, self._block(block))
                lo = max(start, block * BLOCK_ROWS) - block * BLOCK_ROWS
                hi = min(stop, (block + 1) * BLOCK_ROWS) - block * BLOCK_ROWS
                parts.append(cached[1].slice(lo, hi - lo))
            yield pa.concat_tables(parts).combine_chunks()

    def table(self, rows: int) -> pa.Table:
        """All `rows` at once (small sizes: tests, examples)."""
        chunks = list(self.iter_chunks(rows, max(rows, 1)))
        return pa.concat_tables(chunks) if chunks else self.layout.raw_schema().empty_table()

    def probabilities(self, rows: int) -> np.ndarray:
        """`[rows, tasks]`: the probability each of rows `[0, rows)` was drawn positive
        with (a funnel's second task: click AND conversion), the ceiling any model has."""
        blocks = [self._draw(b)[2] for b in range((rows + BLOCK_ROWS - 1) // BLOCK_ROWS)]
        return np.concatenate(blocks)[:rows] if blocks else np.empty((0, len(self._bias)))

    def _draw(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One block's sparse indices, dense values, positive probabilities and labels."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1, block)))
        sparse, dense = self._features(rng, BLOCK_ROWS)
        z = (self._raw_latent(sparse, dense) - self._z_mean) / self._z_std
        probability = _sigmoid(self._scores(z) * self._scale + self._bias)
        labels = rng.random(probability.shape) < probability
        if self.spec.funnel:
            labels[:, 1] &= labels[:, 0]
            probability[:, 1] *= probability[:, 0]
        return sparse, dense, probability, labels

    def _block(self, block: int) -> pa.Table:
        sparse, dense, _, labels = self._draw(block)
        columns: dict[str, pa.Array] = {}
        for name, index, categories in zip(
            self.layout.sparse, sparse.T, self._categories, strict=True
        ):
            columns[name] = categories.names.take(pa.array(index))
        for name, values in zip(self.layout.dense_names, dense.T, strict=True):
            columns[name] = pa.array(values)
        for name, values in zip(self.layout.task_names, labels.T, strict=True):
            columns[name] = pa.array(values.astype(np.int8))
        return pa.table(columns, schema=self.layout.raw_schema())

    def _features(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        sparse = np.empty((n, len(self._categories)), dtype=np.int32)
        for i, categories in enumerate(self._categories):
            sparse[:, i] = categories.sample(rng, n)
        dense = np.empty((n, len(self.layout.dense)), dtype=np.float64)
        for i, spec in enumerate(self.layout.dense):
            dense[:, i] = self.spec.dense[spec.name].sample(rng, n)
        return sparse, dense

    def _visible(self, dense: np.ndarray) -> np.ndarray:
        """Dense values as a model sees them (after the layout's transform)."""
        visible = dense.copy()
        for i, spec in enumerate(self.layout.dense):
            if spec.transform == "log1p":
                visible[:, i] = np.log1p(np.maximum(visible[:, i], 0.0))
        return visible

    def _raw_latent(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        rows = sparse % self._effect_buckets + self._effect_offsets
        z = np.take(self._effects, rows.T, axis=0).sum(axis=0).astype(np.float64)
        standard = (self._visible(dense) - self._dense_mean) / self._dense_std
        return z + standard @ self._dense_weights

    @staticmethod
    def _mix_weights(rng: np.random.Generator, tasks: int, shared_dims: int) -> np.ndarray:
        """Per task: weights on the shared dims, its private dims and the shared interaction.

        Shared weights are `SHARED_CORRELATION * b + sqrt(1 - SHARED_CORRELATION**2) * o_t`
        with `b, o_0, o_1, ...` orthonormal (hence `shared_dims > tasks`), so every pair of
        tasks leans on the shared latent with the same cosine (`SHARED_CORRELATION**2`)
        whatever the seed.
        """
        basis, _ = np.linalg.qr(rng.normal(size=(shared_dims, shared_dims)))
        private = rng.normal(size=(tasks, PRIVATE_DIMS))
        interaction = rng.choice([-1.0, 1.0])
        weights = np.zeros((tasks, shared_dims + tasks * PRIVATE_DIMS + 1))
        rho = SHARED_CORRELATION
        for t in range(tasks):
            shared = rho * basis[:, 0] + np.sqrt(1 - rho**2) * basis[:, 1 + t]
            weights[t, :shared_dims] = 0.75 * shared
            lo = shared_dims + t * PRIVATE_DIMS
            weights[t, lo : lo + PRIVATE_DIMS] = 0.5 * private[t] / np.linalg.norm(private[t])
            weights[t, -1] = 0.45 * interaction
        return weights

    def _scores(self, z: np.ndarray) -> np.ndarray:
        """Unscaled task scores: `[shared | private of every task | z0*z1] @ weights.T`."""
        interaction = (z[:, 0] * z[:, 1])[:, None]
        return np.hstack([z, interaction]) @ self._task_weights.T

    def _calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Offsets hitting the target rates on the calibration rows (bisection)."""
        bias = np.zeros(logits.shape[1])
        for t, rate in enumerate(self.spec.rates):
            gate = _sigmoid(logits[:, 0] + bias[0]) if self.spec.funnel and t == 1 else 1.0
            bias[t] = _solve(
                lambda b, t=t, gate=gate: np.mean(gate * _sigmoid(logits[:, t] + b)), rate
            )
        return bias

    def _calibrate_aucs(
        self, scores: np.ndarray, targets: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-task scale and offset hitting the target rates and oracle AUCs.

        Task by task (a funnel's second task sits on the first's click probability): for a
        trial scale, the offset that hits the rate; bisection on the scale until the
        probabilities' expected AUC, `oracle_auc`, is the target.
        """
        scale = np.ones(scores.shape[1])
        bias = np.zeros(scores.shape[1])
        for t, target in enumerate(targets):
            gate = (
                _sigmoid(scores[:, 0] * scale[0] + bias[0])
                if self.spec.funnel and t == 1
                else np.ones(len(scores))
            )

            def probability(s: float, t: int = t, gate: np.ndarray = gate) -> np.ndarray:
                b = _solve(
                    lambda b: np.mean(gate * _sigmoid(scores[:, t] * s + b)), self.spec.rates[t]
                )
                return gate * _sigmoid(scores[:, t] * s + b)

            lo, hi = 1e-3, 20.0 / scores[:, t].std()
            for _ in range(40):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if oracle_auc(probability(mid)) < target else (lo, mid)
            scale[t] = (lo + hi) / 2
            reached = oracle_auc(probability(scale[t]))
            if abs(reached - target) > 0.005:
                raise ConfigError(
                    f"regime published: {self.layout.task_names[t]!r} cannot reach oracle AUC "
                    f"{target} (closest {reached:.4f}) with these rates"
                )
            bias[t] = _solve(
                lambda b, t=t, gate=gate: np.mean(gate * _sigmoid(scores[:, t] * scale[t] + b)),
                self.spec.rates[t],
            )
        return scale, bias


def oracle_auc(probability: np.ndarray) -> float:
    """Expected AUC of ranking rows by their own positive probability, labels ~ Bernoulli.

    Over all (positive i, negative j) pairs weighted `p_i (1 - p_j)`, the share ranked
    right: with rows sorted by probability, each row's positive mass times the negative
    mass below it.
    """
    p = np.sort(probability)
    negative = 1.0 - p
    below = np.cumsum(negative) - negative
    pairs = p.sum() * negative.sum() - np.sum(p * negative)
    return float(np.sum(p * below) / pairs)


class _ZipfCategories:
    """Zipf draws for one sparse field, and the category strings (`"0"` most frequent).

    Small fields sample through a 2**16-entry lookup table (probabilities rounded to
    1/65536, far below their smallest category's), large ones through the CDF.
    """

    LOOKUP = 1 << 16
    LOOKUP_MAX_CARDINALITY = 256

    def __init__(self, cardinality: int, exponent: float) -> None:
        weights = 1.0 / np.arange(1, cardinality + 1) ** exponent
        self.cdf = np.cumsum(weights) / weights.sum()
        self.names = pc.cast(pa.array(np.arange(cardinality)), pa.string())
        self.table = None
        if cardinality <= self.LOOKUP_MAX_CARDINALITY:
            quantiles = (np.arange(self.LOOKUP) + 0.5) / self.LOOKUP
            self.table = self._index(quantiles)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.table is not None:
            return self.table[rng.integers(0, self.LOOKUP, n)]
        return self._index(rng.random(n))

    def _index(self, uniform: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, uniform), len(self.cdf) - 1).astype(np.int32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve(mean_rate: Callable[[float], float], target: float) -> float:
    """The offset `b` with `mean_rate(b) == target`; `mean_rate` increases with `b`."""
    lo, hi = -40.0, 40.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if mean_rate(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
