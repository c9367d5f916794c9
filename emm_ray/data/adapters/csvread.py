"""Streaming CSV reading whose errors name the file, the row and the column.

pyarrow parses every column as a string in large blocks (fast, flat memory); the
converters below then validate whole columns at once. Only when something fails do
we spend time finding *where*: a line scan for a wrong column count, a bisection
over the failing column for an unparsable number. Rows are counted as lines of the
file, header included, so `sed -n '<row>p' <file>` shows the offending line.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from emm_ray.errors import DataError

BLOCK_BYTES = 8 << 20


@dataclass(frozen=True)
class CsvChunk:
    """A block of rows, all columns as strings; `first_row` is its first line number."""

    path: Path
    table: pa.Table
    first_row: int

    def error(self, message: str, index: int, column: str) -> DataError:
        return DataError(message, self.path, row=self.first_row + index, column=column)

    def strings(self, column: str) -> pa.Array:
        """A sparse column: any non-empty string is a category."""
        values = self.table.column(column).combine_chunks()
        empty = pc.equal(pc.utf8_length(values), 0)
        if pc.any(empty).as_py():
            raise self.error(
                "empty value in a categorical column (write a category such as '?' for missing)",
                _first_true(empty),
                column,
            )
        return values

    def floats(self, column: str) -> pa.Array:
        """A dense column: every value must parse as a finite number."""
        values = self.table.column(column).combine_chunks()
        try:
            numbers = pc.cast(values, pa.float64())
        except pa.ArrowInvalid:
            index = _first_unparsable(values)
            raise self.error(
                f"dense value {values[index].as_py()!r} is not a number", index, column
            ) from None
        finite = pc.is_finite(numbers)
        if not pc.all(finite).as_py():
            index = _first_true(pc.invert(finite))
            raise self.error(f"dense value {values[index].as_py()!r} is not finite", index, column)
        return numbers

    def label(self, column: str, positive: str, negative: str) -> pa.Array:
        """A 0/1 label column from its two allowed raw spellings; anything else is an error."""
        values = self.table.column(column).combine_chunks()
        known = pc.is_in(values, value_set=pa.array([positive, negative]))
        if not pc.all(known).as_py():
            index = _first_true(pc.invert(known))
            raise self.error(
                f"unknown label value {values[index].as_py()!r}; "
                f"expected {positive!r} (positive) or {negative!r} (negative)",
                index,
                column,
            )
        return pc.cast(pc.equal(values, positive), pa.int8())


def require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError("file not found", path)


def open_text(path: Path) -> TextIO:
    """Text view of a plain or gzip-compressed file (by its `.gz` suffix)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def read_header(path: Path, delimiter: str = ",") -> list[str]:
    """Column names from the first line; an empty file is an error."""
    require_file(path)
    try:
        with open_text(path) as handle:
            first = handle.readline().rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read the file (truncated or corrupt {_compression(path)}): {exc}", path
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"the header is not valid UTF-8 ({exc.reason})", path, row=1) from None
    if not first:
        raise DataError("file is empty: expected a header row", path, row=1)
    return first.split(delimiter)


def iter_csv(
    path: Path,
    column_names: list[str],
    *,
    header: bool,
    delimiter: str = ",",
    trim: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[CsvChunk]:
    """Yield string-typed blocks of `path`; every row must have `len(column_names)` fields.

    `trim` strips whitespace around every value (census writes `, ` between fields).
    Quotes are not special in these formats, and an empty line is an error, not a
    skipped row, so no row is ever dropped silently.
    """
    require_file(path)
    read_options = pv.ReadOptions(
        column_names=column_names, skip_rows=1 if header else 0, block_size=block_bytes
    )
    parse_options = pv.ParseOptions(delimiter=delimiter, quote_char=False, ignore_empty_lines=False)
    convert_options = pv.ConvertOptions(
        column_types={name: pa.string() for name in column_names},
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    first_row = next_row = 2 if header else 1
    try:
        reader = pv.open_csv(path, read_options, parse_options, convert_options)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            if trim:
                table = pa.table(
                    {n: pc.utf8_trim_whitespace(table.column(n)) for n in column_names}
                )
            _reject_empty_lines(table, path, next_row)
            yield CsvChunk(path, table, next_row)
            next_row += batch.num_rows
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise DataError("file is empty: no data rows", path) from None
        raise _locate_parse_error(path, len(column_names), delimiter, header, exc) from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip: truncated or corrupt stream
        raise DataError(
            f"cannot read the file (truncated or corrupt {_compression(path)}): {exc}",
            path,
            row=next_row,
        ) from None
    if next_row == first_row:
        raise DataError("file is empty: no data rows", path)


def _reject_empty_lines(table: pa.Table, path: Path, first_row: int) -> None:
    """pyarrow reads an empty line as a row of empty values: name it as what it is."""
    empty = pc.equal(pc.utf8_length(table.column(0)), 0)
    if not pc.any(empty).as_py():
        return
    for column in table.columns[1:]:
        empty = pc.and_(empty, pc.equal(pc.utf8_length(column), 0))
    if pc.any(empty).as_py():
        raise DataError(
            "an empty line where a row was expected", path, row=first_row + _first_true(empty)
        )


def _compression(path: Path) -> str:
    return "gzip stream" if path.suffix == ".gz" else "file"


def _locate_parse_error(
    path: Path, expected: int, delimiter: str, header: bool, exc: pa.ArrowInvalid
) -> DataError:
    """Re-read the file line by line to name the row pyarrow could not parse."""
    for row, line in enumerate(_lines(path), start=1):
        if header and row == 1:
            continue
        found = line.rstrip("\r\n").count(delimiter) + 1
        if found != expected:
            what = " (an empty line)" if not line.strip() else ""
            return DataError(f"expected {expected} columns, found {found}{what}", path, row=row)
    return DataError(f"cannot parse as CSV: {exc}", path)


def _lines(path: Path) -> Iterator[str]:
    """The file's lines, decoded one by one, so a line that is not UTF-8 names its row."""
    row = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as handle:
            for row, raw in enumerate(handle, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"not valid UTF-8 ({exc.reason})", path, row=row) from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read the file (truncated or corrupt {_compression(path)}): {exc}",
            path,
            row=row + 1,
        ) from None


def _first_true(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _first_unparsable(values: pa.Array) -> int:
    """Index of the first value that does not cast to float64 (bisection over slices)."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(values.slice(lo, mid - lo), pa.float64())
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo
