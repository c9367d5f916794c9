"""Search-space files: the shipped ones load, bad ones fail naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emm_ray.errors import ConfigError
from emm_ray.tune.space import SearchSpace, load_tune_spec

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "tune_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_spaces_load(path: Path) -> None:
    spec = load_tune_spec(path)
    assert spec.num_samples >= 1 and spec.search.param_space()


def test_distributions_sample_within_their_bounds() -> None:
    space = SearchSpace.model_validate(
        {
            "levels": {"type": "randint", "low": 1, "high": 2},
            "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
            "d_model": {"type": "choice", "values": [16, 32]},
            "heads": 2,
        }
    ).param_space()
    levels = {space["levels"].sample() for _ in range(200)}
    assert levels == {1, 2}, "randint bounds are both included"
    assert all(1e-4 <= space["lr"].sample() <= 1e-2 for _ in range(200))
    assert all(0.0 <= space["dropout"].sample() <= 0.5 for _ in range(200))
    assert {space["d_model"].sample() for _ in range(100)} == {16, 32}
    assert space["heads"] == 2


def test_fixed_values_are_coerced_by_the_options_own_type() -> None:
    space = SearchSpace.model_validate({"lr": "1e-3", "levels": {"type": "choice", "values": [2]}})
    assert space.lr == 1e-3
    assert space.param_space()["lr"] == 1e-3


BAD = [
    ("unknown option", {"search": {"depth": 2}}, "search.depth", "Extra inputs"),
    ("unknown top-level key", {"num_sample": 3}, "num_sample", "Extra inputs"),
    (
        "low >= high",
        {"search": {"lr": {"type": "uniform", "low": 0.1, "high": 0.01}}},
        "search.lr",
        "low (0.1) must be smaller than high (0.01)",
    ),
    (
        "loguniform low <= 0",
        {"search": {"lr": {"type": "loguniform", "low": 0, "high": 0.01}}},
        "search.lr",
        "loguniform needs low > 0",
    ),
    ("negative value", {"search": {"levels": -1}}, "search.levels", "value -1 is not allowed"),
    (
        "negative range bound",
        {"search": {"top_k": {"type": "randint", "low": -2, "high": 2}}},
        "search.top_k",
        "value -2 is not allowed",
    ),
    (
        "value outside the allowed set",
        {"search": {"variant": {"type": "choice", "values": ["emm", "moe"]}}},
        "search.variant",
        "value 'moe' is not allowed",
    ),
    (
        "distribution unsuited to the option",
        {"search": {"d_model": {"type": "randint", "low": 8, "high": 64}}},
        "search.d_model",
        "randint is not available for d_model",
    ),
    (
        "unknown distribution",
        {"search": {"lr": {"type": "normal", "low": 0.1, "high": 0.2}}},
        "search.lr",
        "a distribution needs type",
    ),
    (
        "width not divisible by heads",
        {"search": {"d_model": 30, "heads": {"type": "choice", "values": [2, 4]}}},
        "search",
        "d_model=30 with heads=4",
    ),
    (
        "empty choice",
        {"search": {"heads": {"type": "choice", "values": []}}},
        "search.heads",
        "at least 1",
    ),
    (
        "boolean as a number",
        {"search": {"levels": {"type": "choice", "values": [True]}}},
        "search.levels",
        "",
    ),
    ("experts per task 0", {"search": {"experts_per_task": 0}}, "search.experts_per_task", ">= 1"),
    ("no concurrency", {"max_concurrent": 0}, "max_concurrent", "greater than or equal to 1"),
    (
        "grace beyond budget",
        {"asha": {"max_t": 2, "grace_period": 3}},
        "asha",
        "grace_period (3) must not exceed max_t (2)",
    ),
    (
        "reduction factor 1",
        {"asha": {"reduction_factor": 1}},
        "asha.reduction_factor",
        "greater than 1",
    ),
]


@pytest.mark.parametrize(("case", "content", "key", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_space_names_file_and_key(
    tmp_path: Path, case: str, content: dict, key: str, message: str
) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as error:
        load_tune_spec(path)
    text = str(error.value)
    assert str(path) in text
    assert f"{key}:" in text or f"{key}." in text, text
    assert message in text, text


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_tune_spec(tmp_path / "nope.yaml")
