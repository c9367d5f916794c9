"""Gate report: per level and task, mean weights that are distributions, table + heatmap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emm_ray.data.batch import Batch
from emm_ray.errors import EmmError
from emm_ray.evaluation.gates import summarize_gates, write_gate_report
from emm_ray.fusion import EMMModel, FusionConfig
from tests.fusion.planted import planted_batch, planted_schema, untrained_pool

MEMBER = {"embed_dim": 4, "hidden": (16, 8)}


@pytest.mark.parametrize("variant", ["emm", "reference"])
def test_gate_report_covers_every_level_task_and_gate(variant: str, tmp_path: Path) -> None:
    schema = planted_schema(3)
    specs = [
        ("mlp", "task0", MEMBER),
        ("deepfm", "task0", MEMBER),
        ("mlp", "task1", MEMBER),
        ("mlp", "task2", MEMBER),
    ]
    model = EMMModel(
        schema,
        untrained_pool(schema, specs),
        FusionConfig(variant=variant, d_model=8, heads=2, top_k=2),
    )
    batch = planted_batch(schema, 50, seed=0)
    rows = summarize_gates(model, [batch.slice(slice(0, 20)), batch.slice(slice(20, 50))])
    groups = {(r.level, r.task, r.gate) for r in rows}
    assert groups == {
        (lv, f"task{t}", g)
        for lv in (0, 1)
        for t in range(3)
        for g in ("task", "fusion", "attention")
    }
    for level, task, gate in groups:
        group = [r for r in rows if (r.level, r.task, r.gate) == (level, task, gate)]
        total_weight = sum(r.mean_weight for r in group)
        selected = sum(r.selection_rate for r in group)
        if gate == "task":
            assert total_weight == pytest.approx(1.0)
        elif gate == "attention":  # the merge's weights over [own; selected] sum to one
            assert total_weight == pytest.approx(1.0)
            own = next(r for r in group if r.candidate == f"own:{task}")
            assert own.selection_rate == 1.0
            assert selected == pytest.approx(3.0 if variant == "emm" else 2.0)
        elif variant == "emm":
            assert 0 < total_weight <= 1 + 1e-6 and selected == pytest.approx(2.0)
            assert all(r.candidate.split("-")[1] != task for r in group)
        else:
            assert selected == pytest.approx(1.0)
            assert sorted(r.candidate for r in group) == sorted(
                {"task0", "task1", "task2"} - {task}
            )

    paths = write_gate_report(rows, tmp_path)
    assert [p.name for p in paths] == ["gates.json", "gates.md", "gates.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads(paths[0].read_text())) == len(rows)
    assert "| 1 | task2 | fusion |" in paths[1].read_text()


def test_gate_report_needs_rows() -> None:
    schema = planted_schema(2)
    model = EMMModel(
        schema,
        untrained_pool(schema, [("mlp", "task0", MEMBER), ("mlp", "task1", MEMBER)]),
        FusionConfig(d_model=8, heads=2),
    )
    empty: list[Batch] = []
    with pytest.raises(EmmError, match="at least one row"):
        summarize_gates(model, empty)
