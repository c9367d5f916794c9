"""Batch scoring (`pipelines/score.py`): Ray Data + an actor pool, the registered model's
own probabilities, bad input refused with the column and the row named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from emm_ray.errors import ConfigError, DataError
from emm_ray.serve.batch import ScoreJob, score_table
from tests.serve.models import (
    SCHEMA,
    RegisteredModel,
    expected_probabilities,
    raw_rows,
    register_tiny_models,
)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> RegisteredModel:
    return register_tiny_models(tmp_path_factory.mktemp("batch"))[0]


def raw_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Raw rows as a file holds them: ids, categories as text, numbers as floats."""
    columns: dict[str, Any] = {"row_id": [1000 + i for i in range(len(rows))]}
    columns |= {f.name: [str(r[f.name]) for r in rows] for f in SCHEMA.sparse}
    columns |= {f.name: [float(r[f.name]) for r in rows] for f in SCHEMA.dense}
    return pa.table(columns)


def scores(directory: Path, tasks: tuple[str, ...]) -> tuple[list[int], np.ndarray]:
    table = pq.read_table(directory).sort_by("row_id")
    return table.column("row_id").to_pylist(), np.stack(
        [table.column(t).to_numpy() for t in tasks], axis=1
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("kind", "actors", "buffer_mib"),
    [("csv", 2, 1), ("parquet", 1, 512)],  # 1 MiB: less read-ahead than one block holds
)
def test_scores_are_the_models_own_probabilities(
    ray_cluster: None,
    model: RegisteredModel,
    tmp_path: Path,
    kind: str,
    actors: int,
    buffer_mib: int,
) -> None:
    rows = raw_rows(SCHEMA, count=700, seed=5)
    source = tmp_path / "input"
    source.mkdir()
    table = raw_table(rows)
    for part, start in enumerate(range(0, len(rows), 350)):  # a folder of two files
        chunk = table.slice(start, 350)
        if kind == "csv":
            pacsv.write_csv(chunk, source / f"part-{part}.csv")
        else:
            pq.write_table(chunk, source / f"part-{part}.parquet")
    report = score_table(
        ScoreJob(
            model_uri=f"models:/{model.name}@champion",
            tracking_uri=model.tracking_uri,
            input_path=str(source),
            output_dir=str(tmp_path / "scores"),
            actors=actors,
            cpus_per_actor=0.95,  # 2 actors hold every CPU but what reading and writing take
            batch_size=128,
            buffer_mib=buffer_mib,
        )
    )
    assert report.rows == len(rows) and report.version == model.version
    ids, probabilities = scores(tmp_path / "scores", model.tasks)
    assert ids == table.column("row_id").to_pylist()
    np.testing.assert_allclose(
        probabilities, expected_probabilities(model, rows), atol=1e-6, rtol=0
    )


def _job(model: RegisteredModel, source: Path, output: Path, **changes: Any) -> ScoreJob:
    return ScoreJob(
        model_uri=model.uri,
        tracking_uri=model.tracking_uri,
        input_path=str(source),
        output_dir=str(output),
        cpus_per_actor=0.5,
        **changes,
    )


@pytest.mark.timeout(300)
def test_an_empty_numeric_value_is_refused_naming_column_and_row(
    ray_cluster: None, model: RegisteredModel, tmp_path: Path
) -> None:
    rows = raw_rows(SCHEMA, count=20, seed=6)
    pacsv.write_csv(raw_table(rows), tmp_path / "rows.csv")
    text = (tmp_path / "rows.csv").read_text().splitlines()
    header = [name.strip('"') for name in text[0].split(",")]
    cells = text[8].split(",")
    cells[header.index("age")] = ""
    text[8] = ",".join(cells)
    (tmp_path / "rows.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(
        DataError, match="'age' is empty or not finite in 1 rows, first at row_id 1007"
    ):
        score_table(_job(model, tmp_path / "rows.csv", tmp_path / "scores"))


def test_a_missing_id_column_or_a_used_output_folder_is_refused(
    ray_cluster: None, model: RegisteredModel, tmp_path: Path
) -> None:
    pq.write_table(raw_table(raw_rows(SCHEMA, count=5)), tmp_path / "rows.parquet")
    with pytest.raises(DataError, match="no id column 'id'.*--id-column"):
        score_table(_job(model, tmp_path / "rows.parquet", tmp_path / "a", id_column="id"))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="not empty"):
        score_table(_job(model, tmp_path / "rows.parquet", tmp_path / "used"))
    with pytest.raises(DataError, match="give .csv .* or .parquet"):
        (tmp_path / "rows.json").write_text("{}")
        score_table(_job(model, tmp_path / "rows.json", tmp_path / "b"))


def test_more_actors_than_the_cluster_holds_is_refused(
    ray_cluster: None, model: RegisteredModel, tmp_path: Path
) -> None:
    """Actors holding every CPU would leave none to read and write: refused up front."""
    pq.write_table(raw_table(raw_rows(SCHEMA, count=5)), tmp_path / "rows.parquet")
    job = _job(model, tmp_path / "rows.parquet", tmp_path / "scores", actors=2)
    with pytest.raises(ConfigError, match="2 actors x 1.0 CPU .* the Ray cluster has 2"):
        score_table(job.model_copy(update={"cpus_per_actor": 1.0}))


def test_file_kinds_subfolders_and_empty_categories(
    ray_cluster: None, model: RegisteredModel, tmp_path: Path
) -> None:
    """Spark-style `*.snappy.parquet` names are parquet; a folder with subfolders is
    refused; an empty categorical value is refused naming the row, as Serve refuses it."""
    rows = raw_rows(SCHEMA, count=6, seed=8)
    (tmp_path / "in").mkdir()
    pq.write_table(raw_table(rows), tmp_path / "in" / "part-0.snappy.parquet")
    report = score_table(_job(model, tmp_path / "in", tmp_path / "scores"))
    assert report.rows == 6
    (tmp_path / "in" / "year=2026").mkdir()
    with pytest.raises(DataError, match="subfolders"):
        score_table(_job(model, tmp_path / "in", tmp_path / "other"))
    table = raw_table(rows)
    education = table.column("education").to_pylist()
    education[3] = None
    table = table.set_column(
        table.schema.get_field_index("education"), "education", pa.array(education)
    )
    pq.write_table(table, tmp_path / "nulls.parquet")
    with pytest.raises(DataError, match="'education' is empty in 1 rows, first at row_id 1003"):
        score_table(_job(model, tmp_path / "nulls.parquet", tmp_path / "third"))
    assert not (tmp_path / "third").exists(), "a failed job left scores behind"
