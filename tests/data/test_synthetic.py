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
from emm_ray.data.schema import FeatureSchema, fit_dense_field, fit_sparse_field
from emm_ray.data.synthetic import BLOCK_ROWS, SyntheticGenerator
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
