"""Adapters on the real shared files: row counts, features, label rates, layouts."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from emm_ray.data.adapters import ADAPTERS, ali_ccp, aliexpress, census, get_adapter
from emm_ray.errors import ConfigError

CENSUS_FILE = "census-income/census-income.data.gz"


@pytest.fixture(scope="module")
def census_raw(data_dir: Path):
    return get_adapter("census").read(data_dir / CENSUS_FILE)


def test_census_real_file_rows_features_and_label_rates(census_raw) -> None:
    assert census_raw.num_rows == 199_523
    assert census.LAYOUT.num_features == 39
    assert len(census.LAYOUT.sparse) == 32 and len(census.LAYOUT.dense) == 7
    assert census_raw.schema == census.LAYOUT.raw_schema()
    assert pc.sum(census_raw.column("income")).as_py() == 12_382
    assert pc.sum(census_raw.column("never_married")).as_py() == 86_485
    assert pc.mean(census_raw.column("income")).as_py() == pytest.approx(0.0621, abs=5e-4)
    assert pc.mean(census_raw.column("never_married")).as_py() == pytest.approx(0.4335, abs=5e-4)


def test_census_features_exclude_label_sources_and_weight(census_raw) -> None:
    features = set(census.LAYOUT.sparse) | set(census.LAYOUT.dense_names)
    assert not features & {"marital_stat", "income_label", "instance_weight"}
    assert "?" in pc.unique(census_raw.column("migration_code_change_in_msa")).to_pylist()
    assert pc.max(census_raw.column("age")).as_py() == 90
    assert census_raw.column("class_of_worker")[0].as_py() == "Not in universe"


def test_census_column_names_match_the_shared_column_list(data_dir: Path) -> None:
    listed = [
        line.split(":", 1)[1].split("(")[0].split(" - ")[0].strip()
        for line in (data_dir / "census-income/census-income.columns.txt").read_text().splitlines()
        if line[:1].isdigit()
    ]
    assert tuple(listed) == census.COLUMNS


def test_ali_ccp_rechub_form(data_dir: Path) -> None:
    adapter = get_adapter("ali_ccp")
    train = adapter.read(data_dir / "ali-ccp/torch-rechub/ali_ccp_train_sample.csv")
    val = adapter.read(data_dir / "ali-ccp/torch-rechub/ali_ccp_val_sample.csv")
    assert adapter.layout(data_dir / "ali-ccp/torch-rechub/ali_ccp_train_sample.csv") == (
        ali_ccp.RECHUB_LAYOUT
    )
    assert (train.num_rows, val.num_rows) == (100, 50)
    assert len(ali_ccp.RECHUB_LAYOUT.sparse) == 23 and len(ali_ccp.RECHUB_LAYOUT.dense) == 8
    assert train.schema == ali_ccp.RECHUB_LAYOUT.raw_schema()
    assert pc.sum(train.column("ctr")).as_py() == 7
    assert pc.sum(train.column("ctcvr")).as_py() == 1
    assert (pc.sum(val.column("ctr")).as_py(), pc.sum(val.column("ctcvr")).as_py()) == (3, 1)


def test_ali_ccp_aitm_form_is_detected_by_header(data_dir: Path) -> None:
    path = data_dir / "ali-ccp/paddlerec-aitm/train.csv"
    table = get_adapter("ali_ccp").read(path)
    assert get_adapter("ali_ccp").layout(path) == ali_ccp.AITM_LAYOUT
    assert table.num_rows == 48
    assert table.schema == ali_ccp.AITM_LAYOUT.raw_schema()
    assert len(ali_ccp.AITM_LAYOUT.sparse) == 18 and not ali_ccp.AITM_LAYOUT.dense
    assert (pc.sum(table.column("ctr")).as_py(), pc.sum(table.column("ctcvr")).as_py()) == (3, 3)
    assert table.column("101")[0].as_py() == "85077"


def test_aliexpress_form(data_dir: Path) -> None:
    table = get_adapter("aliexpress").read(
        data_dir / "aliexpress/torch-rechub/aliexpress_train_sample.csv"
    )
    assert table.num_rows == 100
    assert table.schema == aliexpress.LAYOUT.raw_schema()
    assert "search_id" not in table.column_names
    assert len(aliexpress.LAYOUT.sparse) == 16 and len(aliexpress.LAYOUT.dense) == 63
    assert pc.sum(table.column("ctr")).as_py() == 60
    assert pc.sum(table.column("ctcvr")).as_py() == 2


def test_ctcvr_is_click_and_conversion(tmp_path: Path) -> None:
    header = ",".join(aliexpress.COLUMNS)
    features = ",".join(["1"] * 16 + ["0.5"] * 63)
    rows = [f"7,{features},{click},{conv}" for click, conv in [(1, 1), (0, 1), (1, 0), (0, 0)]]
    path = tmp_path / "aliexpress.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    table = get_adapter("aliexpress").read(path)
    assert table.column("ctr").to_pylist() == [1, 0, 1, 0]
    assert table.column("ctcvr").to_pylist() == [1, 0, 0, 0]


def test_unknown_dataset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'movielens'"):
        get_adapter("movielens")
    assert set(ADAPTERS) == {"census", "ali_ccp", "aliexpress"}
