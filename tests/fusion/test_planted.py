"""The point of fusion: on planted cross-task signal the fused model beats its own pool.

Each member saw only its own task's fields (see `planted.py`), so it caps near the
own-table oracle (test AUC ~0.83); the rest of each task's signal lives in the other
task's member. The fused model must find it there: if fusion did not transfer knowledge
between members, the fused AUC would stay at the members' level and this test fails.
"""

from __future__ import annotations

from emm_ray.evaluation.metrics import score_module
from tests.fusion.conftest import FusedRun, Planted

MARGIN = 0.02


def test_fused_model_beats_every_pool_member_on_every_task(
    planted: Planted, fused_planted: FusedRun
) -> None:
    model = fused_planted.model
    fused = {
        r.task: r.auc
        for r in score_module(
            "fused", "fused", model, planted.test, model.task_indices, model.task_names
        )
    }
    for member in fused_planted.pool:
        (row,) = score_module(
            member.name,
            "pool",
            member.model,
            planted.test,
            [planted.schema.task_index(member.task)],
            [member.task],
        )
        assert fused[member.task] >= row.auc + MARGIN, (member.name, row.auc, fused)
