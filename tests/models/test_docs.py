"""docs/models.md documents every registered architecture and its real defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emm_ray.models import ARCHITECTURES, model_class

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def shown(value: object) -> str:
    """How the parameter tables write a default."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_hyperparameter_is_in_the_zoo_readme_with_its_default(architecture: str) -> None:
    text = DOC.read_text()
    section = re.search(rf"^## {architecture}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, f"docs/models.md has no '## {architecture}' section"
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", section.group(1), re.M))
    fields = model_class(architecture).Hyperparameters.model_fields
    assert set(rows) == set(fields), f"{architecture}: table rows {sorted(rows)}"
    for name, field in fields.items():
        assert rows[name].strip() == shown(field.default), f"{architecture}.{name}"
