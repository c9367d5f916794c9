"""Synthetic generators: determinism, chunking, real-like schema and rates, planted signal."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy.sparse import csr_matrix, hstack
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from emm_ray.data.adapters import ali_ccp, aliexpress, census
from emm_ray.data.prepare import DatasetConfig
from emm_ray.data.schema import FeatureSchema, fit_dense_field, fit_sparse_field
from emm_ray.data.synthetic import BLOCK_ROWS, SyntheticGenerator, oracle_auc
from emm_ray.errors import ConfigError

REAL_LAYOUTS = {
    "census": census.LAYOUT,
    "ali_ccp": ali_ccp.RECHUB_LAYOUT,
    "aliexpress": aliexpress.LAYOUT,
}


@pytest.mark.parametrize("dataset", sorted(REAL_LAYOUTS))
def test_same_raw_schema_as_the_real_format_and_labelled_synthetic(dataset: str) -> None:
    generator = SyntheticGenerator(dataset, seed=0)
    table = generator.table(500)
    assert table.schema == REAL_LAYOUTS[dataset].raw_schema()
    assert generator.layout.dataset == f"{dataset}-synthetic"
    assert generator.layout.renamed(dataset) == REAL_LAYOUTS[dataset]


@pytest.mark.parametrize("dataset", sorted(REAL_LAYOUTS))
def test_same_seed_same_rows_other_seed_other_rows(dataset: str) -> None:
    first = SyntheticGenerator(dataset, seed=7).table(3_000)
    again = SyntheticGenerator(dataset, seed=7).table(3_000)
    other = SyntheticGenerator(dataset, seed=8).table(3_000)
    assert first.equals(again)
    assert not first.equals(other)
    name = REAL_LAYOUTS[dataset].sparse[0]
    assert first.column(name) != other.column(name)


def test_rows_do_not_depend_on_chunk_size() -> None:
    generator = SyntheticGenerator("census", seed=3)
    rows = 4 * BLOCK_ROWS + 1_234
    whole = generator.table(rows)
    chunks = list(generator.iter_chunks(rows, chunk_rows=7_777))
    assert [c.num_rows for c in chunks[:-1]] == [7_777] * (len(chunks) - 1)
    assert sum(c.num_rows for c in chunks) == rows
    assert whole.equals(pa.concat_tables(chunks).combine_chunks())
    prefix = generator.table(5_000)
    assert prefix.equals(whole.slice(0, 5_000))


def test_chunks_are_generated_lazily() -> None:
    chunks = SyntheticGenerator("census", seed=0).iter_chunks(10**9, chunk_rows=1_000)
    assert next(chunks).num_rows == 1_000  # a billion rows requested, one chunk made


@pytest.mark.parametrize(
    ("dataset", "rates"),
    [("census", (0.062, 0.4335)), ("ali_ccp", (0.04, 0.006)), ("aliexpress", (0.025, 0.003))],
)
def test_label_rates_match_their_targets(dataset: str, rates: tuple[float, float]) -> None:
    table = SyntheticGenerator(dataset, seed=1).table(150_000)
    layout = REAL_LAYOUTS[dataset]
    for task, rate in zip(layout.task_names, rates, strict=True):
        assert pc.mean(table.column(task)).as_py() == pytest.approx(rate, rel=0.15)
    if dataset != "census":
        ctr, ctcvr = table.column("ctr").to_numpy(), table.column("ctcvr").to_numpy()
        assert np.all(ctcvr <= ctr)  # funnel: a conversion needs a click


def test_census_cardinalities_follow_the_real_data() -> None:
    table = SyntheticGenerator("census", seed=0).table(50_000)
    distinct = {n: len(pc.unique(table.column(n))) for n in census.LAYOUT.sparse}
    assert distinct["sex"] == 2 and distinct["year"] == 2
    assert 40 <= distinct["detailed_industry_recode"] <= 52
    assert pc.min(table.column("age")).as_py() >= 0 and pc.max(table.column("age")).as_py() <= 90
    zero_gains = pc.mean(pc.equal(table.column("capital_gains"), 0)).as_py()
    assert 0.9 < zero_gains < 0.99


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_signal_is_learnable_and_shared_between_tasks(seed: int) -> None:
    """A linear model on 5,000 rows finds each task, and its scores rank the other task."""
    generator = SyntheticGenerator("census", seed=seed)
    table = generator.table(10_000)
    train, test = table.slice(0, 5_000), table.slice(5_000)
    layout = generator.layout
    schema = FeatureSchema(
        dataset=layout.dataset,
        sparse=tuple(fit_sparse_field(n, train.column(n)) for n in layout.sparse),
        dense=tuple(
            fit_dense_field(d.name, train.column(d.name).to_numpy(), d.transform)
            for d in layout.dense
        ),
        tasks=layout.tasks,
    )
    enc_train, enc_test = schema.encode(train), schema.encode(test)
    one_hot = OneHotEncoder(handle_unknown="ignore").fit(_sparse(enc_train, schema))

    def features(encoded):
        dense = np.stack([encoded.column(n).to_numpy() for n in schema.dense_names], axis=1)
        return hstack([one_hot.transform(_sparse(encoded, schema)), csr_matrix(dense)]).tocsr()

    x_train, x_test = features(enc_train), features(enc_test)
    first, second = schema.task_names
    for task, other in [(first, second), (second, first)]:
        model = LogisticRegression(C=0.5, max_iter=3_000).fit(
            x_train, enc_train.column(task).to_numpy()
        )
        scores = model.decision_function(x_test)
        assert roc_auc_score(enc_test.column(task).to_numpy(), scores) > 0.7
        assert roc_auc_score(enc_test.column(other).to_numpy(), scores) > 0.55


def _sparse(encoded, schema: FeatureSchema) -> np.ndarray:
    return np.stack([encoded.column(n).to_numpy() for n in schema.sparse_names], axis=1)


def test_unknown_synthetic_dataset() -> None:
    with pytest.raises(ConfigError, match="no synthetic generator for dataset 'movielens'"):
        SyntheticGenerator("movielens")


@pytest.mark.parametrize("dataset", ["ali_ccp", "aliexpress"])
def test_published_regime_hits_the_real_rates_and_auc_levels(dataset: str) -> None:
    """Fresh rows (not the calibration rows): rates and the probabilities' own AUC."""
    generator = SyntheticGenerator(dataset, seed=3, regime="published")
    published = generator.spec.published
    rows = 4 * BLOCK_ROWS
    probability = generator.probabilities(rows)
    table = generator.table(rows)
    for t, rate in enumerate(published.rates):
        assert probability[:, t].mean() == pytest.approx(rate, rel=0.1)
        assert oracle_auc(probability[:, t]) == pytest.approx(published.oracle_aucs[t], abs=0.01)
    labels = table.column("ctr").to_numpy()  # enough positives to check the draw itself
    assert labels.mean() == pytest.approx(published.rates[0], rel=0.1)
    assert roc_auc_score(labels, probability[:, 0]) == pytest.approx(
        published.oracle_aucs[0], abs=0.02
    )


def test_probabilities_are_those_the_labels_were_drawn_with() -> None:
    generator = SyntheticGenerator("ali_ccp", seed=0)
    probability = generator.probabilities(BLOCK_ROWS + 10)
    table = generator.table(BLOCK_ROWS + 10)
    assert probability.shape == (BLOCK_ROWS + 10, 2)
    assert np.all(probability[:, 1] <= probability[:, 0])  # funnel: CTCVR = CTR x CVR
    for t, task in enumerate(generator.layout.task_names):
        labels = table.column(task).to_numpy()
        assert labels.mean() == pytest.approx(probability[:, t].mean(), rel=0.1)


def test_oracle_auc_is_the_expected_auc_of_bernoulli_labels() -> None:
    rng = np.random.default_rng(0)
    probability = rng.beta(0.5, 3.0, 2_000)
    draws = [roc_auc_score(rng.random(2_000) < probability, probability) for _ in range(300)]
    assert oracle_auc(probability) == pytest.approx(np.mean(draws), abs=0.003)
    assert oracle_auc(np.full(100, 0.3) + np.linspace(0, 1e-9, 100)) == pytest.approx(0.5, abs=1e-3)


def test_published_regime_is_refused_where_there_is_none() -> None:
    with pytest.raises(ConfigError, match="no published regime for synthetic 'census'"):
        SyntheticGenerator("census", regime="published")
    with pytest.raises(ValueError, match="regime: published is a synthetic setting"):
        DatasetConfig(name="census", source="synthetic", regime="published")
