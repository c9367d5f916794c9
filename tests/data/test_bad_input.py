"""Bad raw input: each case names the file, the row (a line of the file) and the column."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from emm_ray.data.adapters import ali_ccp, aliexpress, census, get_adapter
from emm_ray.data.adapters.csvread import BLOCK_BYTES
from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.errors import DataError

CENSUS_FILE = "census-income/census-income.data.gz"
RECHUB_FILE = "ali-ccp/torch-rechub/ali_ccp_train_sample.csv"


@pytest.fixture(scope="module")
def census_lines(data_dir: Path) -> list[str]:
    with gzip.open(data_dir / CENSUS_FILE, "rt") as handle:
        return [next(handle).rstrip("\n") for _ in range(5)]


def _census_file(tmp_path: Path, lines: list[str], name: str = "census.data") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _replace_field(line: str, index: int, value: str) -> str:
    fields = line.split(", ")
    fields[index] = value
    return ", ".join(fields)


def _read(dataset: str, path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        get_adapter(dataset).read(path)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    error = _read("census", tmp_path / "nope.data")
    assert error.path == str(tmp_path / "nope.data")
    assert "file not found" in str(error)


@pytest.mark.parametrize("dataset", ["census", "ali_ccp", "aliexpress"])
def test_empty_file(tmp_path: Path, dataset: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    error = _read(dataset, path)
    assert error.path == str(path)
    assert "empty" in str(error)


def test_empty_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "census.data.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("")
    assert "file is empty" in str(_read("census", path))


def test_header_only_file_has_no_data_rows(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "header_only.csv"
    path.write_text((data_dir / RECHUB_FILE).read_text().splitlines()[0] + "\n")
    assert "no data rows" in str(_read("ali_ccp", path))


def test_census_wrong_column_count_names_the_row(tmp_path: Path, census_lines) -> None:
    lines = list(census_lines)
    lines[2] = lines[2].rsplit(", ", 1)[0]  # drop the label field of row 3
    path = _census_file(tmp_path, lines)
    error = _read("census", path)
    assert (error.path, error.row) == (str(path), 3)
    assert "expected 42 columns, found 41" in str(error)


def test_census_wrong_column_count_in_a_gzip_file(tmp_path: Path, census_lines) -> None:
    lines = [*census_lines, census_lines[0] + ", extra"]
    path = tmp_path / "census.data.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    error = _read("census", path)
    assert error.row == 6
    assert "found 43" in str(error)


def test_census_empty_line_is_not_skipped(tmp_path: Path, census_lines) -> None:
    path = _census_file(tmp_path, [census_lines[0], "", *census_lines[1:]])
    error = _read("census", path)
    assert error.row == 2
    assert "an empty line" in str(error)
    assert error.column is None


def test_census_non_numeric_dense_value(tmp_path: Path, census_lines) -> None:
    lines = list(census_lines)
    lines[3] = _replace_field(lines[3], census.COLUMNS.index("capital_gains"), "lots")
    path = _census_file(tmp_path, lines)
    error = _read("census", path)
    assert (error.path, error.row, error.column) == (str(path), 4, "capital_gains")
    assert "'lots' is not a number" in str(error)


def test_census_non_finite_dense_value(tmp_path: Path, census_lines) -> None:
    lines = list(census_lines)
    lines[1] = _replace_field(lines[1], census.COLUMNS.index("age"), "nan")
    error = _read("census", _census_file(tmp_path, lines))
    assert (error.row, error.column) == (2, "age")
    assert "not finite" in str(error)


def test_census_unknown_label_value(tmp_path: Path, census_lines) -> None:
    lines = list(census_lines)
    lines[4] = _replace_field(lines[4], 41, "50000-.")
    path = _census_file(tmp_path, lines)
    error = _read("census", path)
    assert (error.path, error.row, error.column) == (str(path), 5, "income_label")
    assert "unknown label value '50000-.'" in str(error)


def test_census_bad_value_in_a_later_block_gets_its_absolute_row(
    tmp_path: Path, census_lines
) -> None:
    lines = census_lines * 4000
    lines[19_000] = _replace_field(lines[19_000], 0, "old")
    path = _census_file(tmp_path, lines)
    assert path.stat().st_size > BLOCK_BYTES  # the bad row is not in the first block
    error = _read("census", path)
    assert (error.row, error.column) == (19_001, "age")


def test_ali_ccp_unknown_header(tmp_path: Path, data_dir: Path) -> None:
    lines = (data_dir / RECHUB_FILE).read_text().splitlines()
    lines[0] = lines[0].replace("D508", "D5O8")
    path = tmp_path / "renamed.csv"
    path.write_text("\n".join(lines))
    error = _read("ali_ccp", path)
    assert error.row == 1
    assert "missing columns ['D508']" in str(error) and "unexpected columns ['D5O8']" in str(error)


def test_ali_ccp_wrong_column_count(tmp_path: Path, data_dir: Path) -> None:
    lines = (data_dir / RECHUB_FILE).read_text().splitlines()
    lines[7] = lines[7] + ",0.5"
    path = tmp_path / "extra.csv"
    path.write_text("\n".join(lines))
    error = _read("ali_ccp", path)
    assert error.row == 8
    assert "expected 33 columns, found 34" in str(error)


def test_ali_ccp_non_numeric_dense_value(tmp_path: Path, data_dir: Path) -> None:
    lines = (data_dir / RECHUB_FILE).read_text().splitlines()
    fields = lines[10].split(",")
    fields[lines[0].split(",").index("D509")] = "0.4.1"
    lines[10] = ",".join(fields)
    path = tmp_path / "dense.csv"
    path.write_text("\n".join(lines))
    error = _read("ali_ccp", path)
    assert (error.path, error.row, error.column) == (str(path), 11, "D509")


def test_ali_ccp_unknown_label_value(tmp_path: Path, data_dir: Path) -> None:
    lines = (data_dir / RECHUB_FILE).read_text().splitlines()
    lines[50] = "2" + lines[50][1:]
    path = tmp_path / "label.csv"
    path.write_text("\n".join(lines))
    error = _read("ali_ccp", path)
    assert (error.row, error.column) == (51, "click")
    assert "unknown label value '2'" in str(error)


def test_ali_ccp_empty_sparse_value(tmp_path: Path, data_dir: Path) -> None:
    lines = (data_dir / "ali-ccp/paddlerec-aitm/train.csv").read_text().splitlines()
    fields = lines[3].split(",")
    fields[ali_ccp.FORMS["paddlerec-aitm"][0].index("205")] = ""
    lines[3] = ",".join(fields)
    path = tmp_path / "aitm.csv"
    path.write_text("\n".join(lines))
    error = _read("ali_ccp", path)
    assert (error.row, error.column) == (4, "205")


def test_aliexpress_unknown_label_value(tmp_path: Path, data_dir: Path) -> None:
    lines = (data_dir / "aliexpress/torch-rechub/aliexpress_train_sample.csv").read_text()
    lines = lines.splitlines()
    lines[20] = lines[20].rsplit(",", 1)[0] + ",yes"
    path = tmp_path / "aliexpress.csv"
    path.write_text("\n".join(lines))
    error = _read("aliexpress", path)
    assert (error.row, error.column) == (21, "conversion")


def test_aliexpress_missing_column_in_header(tmp_path: Path) -> None:
    header = [c for c in aliexpress.COLUMNS if c != "numerical_7"]
    path = tmp_path / "aliexpress.csv"
    path.write_text(",".join(header) + "\n" + ",".join(["1"] * len(header)) + "\n")
    assert "missing columns ['numerical_7']" in str(_read("aliexpress", path))


def test_prepare_names_a_missing_file(tmp_path: Path) -> None:
    config = DatasetConfig(source="real", train_path=tmp_path / "absent.data.gz")
    with pytest.raises(DataError, match="absent.data.gz: file not found"):
        prepare_dataset(config, tmp_path / "out")


def test_prepare_refuses_a_split_that_would_be_empty(tmp_path: Path, census_lines) -> None:
    path = _census_file(tmp_path, census_lines)
    with pytest.raises(DataError, match="split would be empty"):
        prepare_dataset(DatasetConfig(source="real", train_path=path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _full_census_gzip(data_dir: Path, path: Path, rows: int = 20_000) -> bytes:
    """A real gzip of `rows` census lines (several pyarrow blocks), written to `path`."""
    with gzip.open(data_dir / CENSUS_FILE, "rt") as handle:
        text = "".join(next(handle) for _ in range(rows))
    payload = gzip.compress(text.encode())
    path.write_bytes(payload)
    return payload


def test_truncated_gzip_names_the_file(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "census.data.gz"
    payload = _full_census_gzip(data_dir, path)
    path.write_bytes(payload[: len(payload) // 2])  # a download cut off half way
    error = _read("census", path)
    assert error.path == str(path)
    assert "truncated or corrupt gzip stream" in str(error)


def test_corrupt_gzip_names_the_file(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "census.data.gz"
    payload = bytearray(_full_census_gzip(data_dir, path))
    payload[len(payload) // 3 : len(payload) // 3 + 64] = bytes(64)  # a damaged block
    path.write_bytes(bytes(payload))
    error = _read("census", path)
    assert error.path == str(path)
    assert "truncated or corrupt gzip stream" in str(error) or "UTF-8" in str(error)


def test_not_a_gzip_file_with_a_gz_name(tmp_path: Path) -> None:
    path = tmp_path / "census.data.gz"
    path.write_bytes(b"this was never compressed\n" * 10)
    error = _read("census", path)
    assert error.path == str(path)
    assert "truncated or corrupt gzip stream" in str(error)


def test_invalid_utf8_names_the_row(tmp_path: Path, census_lines) -> None:
    path = tmp_path / "census.data"
    lines = [line.encode() for line in census_lines]
    lines[3] = lines[3].replace(b"Not in universe", b"Not in \xff\xfe universe", 1)
    path.write_bytes(b"\n".join(lines) + b"\n")
    error = _read("census", path)
    assert (error.path, error.row) == (str(path), 4)
    assert "not valid UTF-8" in str(error)
