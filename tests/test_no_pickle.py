"""No code path loads pickles: every `torch.load` is `weights_only=True`, YAML is safe.

A static scan of the shipped code (the behaviour itself is tested where artifacts are
loaded: `tests/tracking/test_artifacts.py::test_pickled_code_is_never_executed`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    p for folder in ("emm_ray", "pipelines", "benchmarks") for p in (REPO / folder).rglob("*.py")
)
UNSAFE_MODULES = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"read_pickle", "unsafe_load", "full_load"}  # pandas, PyYAML


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_no_pickle_loading(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]  # `from ray import cloudpickle` too
            if isinstance(node, ast.ImportFrom):
                names.append(node.module or "")
            unsafe = {part for n in names for part in str(n).split(".")} & UNSAFE_MODULES
            assert not unsafe, f"{path}:{node.lineno} imports {unsafe}"
    for call in _calls(tree):
        name, where = _name(call), f"{path}:{call.lineno}"
        assert name not in UNSAFE_CALLS, f"{where}: {name}"
        if name == "load" and isinstance(call.func, ast.Attribute):
            owner = call.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else ""
            if owner_name == "torch":
                assert _keyword(call, "weights_only") is True, f"{where}: weights_only=True"
            assert owner_name != "yaml", f"{where}: yaml.load (use yaml.safe_load)"
            if owner_name in {"np", "numpy"}:
                assert _keyword(call, "allow_pickle") is not True, f"{where}: allow_pickle"


def test_the_scan_sees_the_loaders() -> None:
    """The scan is not vacuous: it finds the artifact loader's torch.load."""
    loader = REPO / "emm_ray" / "tracking" / "artifacts.py"
    calls = [
        c
        for c in _calls(ast.parse(loader.read_text()))
        if _name(c) == "load" and getattr(c.func.value, "id", "") == "torch"
    ]
    assert calls and all(_keyword(c, "weights_only") is True for c in calls)
    assert len(SHIPPED) > 50
