"""Report writer and metrics: the report.json contract, the markdown table, AUC edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from emm_ray.errors import EmmError
from emm_ray.evaluation.metrics import score
from emm_ray.evaluation.report import ReportRow, read_report, render_markdown, write_report

ROWS = [
    ReportRow(model="mlp-income", kind="pool", task="income", auc=0.94, logloss=0.15, rows=100),
    ReportRow(model="emm", kind="fused", task="income", auc=0.951, logloss=0.14, rows=100),
    ReportRow(model="emm", kind="fused", task="never_married", auc=None, logloss=0.3, rows=100),
    ReportRow(model="ple", kind="baseline", task="income", auc=0.9456, logloss=0.145, rows=100),
]


def test_report_json_is_one_row_per_model_and_task(tmp_path: Path) -> None:
    json_path, md_path = write_report(ROWS, tmp_path, title="Census test")
    raw = json.loads(json_path.read_text())
    assert isinstance(raw, list) and len(raw) == 4
    assert all(set(r) == {"model", "kind", "task", "auc", "logloss", "rows"} for r in raw)
    assert raw[2]["auc"] is None
    assert read_report(tmp_path) == ROWS
    assert md_path.read_text() == render_markdown(ROWS, "Census test")


def test_markdown_table_puts_fused_first_and_tasks_side_by_side() -> None:
    text = render_markdown(ROWS, "Census test", notes="synthetic data")
    lines = text.splitlines()
    assert lines[0] == "# Census test" and "synthetic data" in lines
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == (
        "| model | kind | AUC income | logloss income | AUC never_married | logloss never_married |"
    )
    assert table[2] == "| emm | fused | 0.9510 | 0.1400 | n/a | 0.3000 |"
    assert table[3] == "| mlp-income | pool | 0.9400 | 0.1500 |  |  |"
    assert table[4].startswith("| ple | baseline | 0.9456")


def test_report_rows_are_validated() -> None:
    with pytest.raises(ValueError, match="kind"):
        ReportRow(model="x", kind="ensemble", task="t", auc=0.5, logloss=0.1, rows=1)


def test_score_matches_sklearn_and_reports_single_class_auc_as_none() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 2, generator=generator)
    labels = torch.stack(
        [
            (torch.rand(200, generator=generator) < torch.sigmoid(logits[:, 0])).float(),
            torch.zeros(200),
        ],
        dim=1,
    )
    rows = score("m", "pool", logits, labels, ["a", "b"])
    p = torch.sigmoid(logits.double()).numpy()
    assert rows[0].auc == pytest.approx(roc_auc_score(labels[:, 0].numpy(), p[:, 0]))
    assert rows[0].logloss == pytest.approx(log_loss(labels[:, 0].numpy(), p[:, 0]), rel=1e-9)
    assert rows[1].auc is None and np.isfinite(rows[1].logloss) and rows[1].rows == 200
    with pytest.raises(EmmError, match="do not match tasks"):
        score("m", "pool", logits, labels, ["a"])
