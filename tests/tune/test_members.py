"""`experts_per_task`: which pool members a trial fuses."""

from __future__ import annotations

from emm_ray.fusion.stage import MemberWeights
from emm_ray.tune.trial import select_members


def _member(name: str, task: str, auc: float) -> MemberWeights:
    return MemberWeights(name, "mlp", task, {}, {}, {"metrics": {"val_auc": auc}})


POOL = (
    _member("a", "income", 0.90),
    _member("b", "never_married", 0.97),
    _member("c", "income", 0.93),
    _member("d", "never_married", 0.99),
    _member("e", "income", 0.91),
)


def test_best_members_of_each_task_are_kept_in_pool_order() -> None:
    assert [m.name for m in select_members(POOL, 1)] == ["c", "d"]
    assert [m.name for m in select_members(POOL, 2)] == ["b", "c", "d", "e"]


def test_all_members_when_unset_or_more_than_available() -> None:
    assert select_members(POOL, None) == POOL
    assert select_members(POOL, 5) == POOL
