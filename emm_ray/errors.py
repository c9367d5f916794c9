"""Exceptions a user can act on: each names the file, row, field or value at fault."""

from __future__ import annotations

from pathlib import Path


class EmmError(Exception):
    """Base class for every error emm-ray raises on purpose."""


class DataError(EmmError):
    """Bad input data: names the file and, where known, the row (1-based) and column."""

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.row = row
        self.column = column
        where = [f"file {self.path}"] if self.path else []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class SchemaMismatchError(EmmError):
    """A model or artifact was built for a different feature schema than the data's."""


class ConfigError(EmmError):
    """A YAML config names an unknown key, a bad value, or a missing file."""


class ArtifactIntegrityError(EmmError):
    """A saved artifact's checksum does not match its manifest (corrupted or tampered)."""
