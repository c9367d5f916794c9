"""Recognise which known form a headered CSV is in, by its column names."""

from __future__ import annotations

from pathlib import Path

from emm_ray.data.adapters.csvread import read_header
from emm_ray.errors import DataError


def match_header(
    path: Path, title: str, forms: dict[str, tuple[str, ...]]
) -> tuple[str, list[str]]:
    """Return `(form, header)` for the form whose columns the header holds, in any order.

    A header matching no form is an error naming what is missing and unexpected
    relative to the closest form, so a renamed or dropped column is easy to spot.
    """
    header = read_header(path)
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise DataError(f"duplicate column names in the header: {duplicated}", path, row=1)
    for form, columns in forms.items():
        if set(header) == set(columns):
            return form, header

    def distance(columns: tuple[str, ...]) -> int:
        return len(set(header) ^ set(columns))

    closest = min(forms, key=lambda form: distance(forms[form]))
    missing = [c for c in forms[closest] if c not in header]
    unexpected = [c for c in header if c not in forms[closest]]
    raise DataError(
        f"header matches no known {title} form ({', '.join(forms)}); closest is {closest!r}: "
        f"missing columns {missing}, unexpected columns {unexpected}",
        path,
        row=1,
    )
