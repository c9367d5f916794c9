"""Evaluation: per-task test metrics, the `report.json` / `report.md` writer, gate reports."""
