"""The pool ensemble a `pool_residual` fused model starts from: mean or stacked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

from emm_ray.data.batch import Batch
from emm_ray.errors import DataError
from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.fusion.artifact import load_fused_model, save_fused_model
from emm_ray.train.loop import TensorBatches
from tests.fusion.conftest import Planted
from tests.fusion.planted import planted_batch, planted_schema, untrained_pool
from tests.fusion.test_decompose import TINY


def residual(ensemble: str = "stacked", inputs: str = "own") -> FusionConfig:
    return FusionConfig(
        d_model=8, heads=2, prediction="pool_residual", ensemble=ensemble, ensemble_inputs=inputs
    )


def auc(model: EMMModel, data: Batch, column: int) -> float:
    with torch.no_grad():
        scores = model.eval()(data.sparse, data.dense)[:, column]
    return float(roc_auc_score(data.labels[:, model.task_indices[column]], scores))


def test_stacking_leans_on_the_informative_member(
    planted: Planted, planted_pool: list[PoolMember]
) -> None:
    trained = planted_pool[0]  # task0, trained on its own fields
    untrained = untrained_pool(planted.schema, [("mlp", "task0", TINY["mlp"])])[0].model
    with torch.no_grad():  # confident noise, twice the trained member's spread: drags a mean
        rows = (planted.train.sparse, planted.train.dense)
        scale = 2 * trained.model(*rows).std() / untrained(*rows).std()
        untrained.tower.linear.weight.mul_(scale)
    noise = PoolMember("noise-task0", untrained)
    pool = [trained, noise, planted_pool[1]]
    mean = EMMModel(planted.schema, pool, residual("mean"))
    stacked = EMMModel(planted.schema, pool, residual("stacked"))
    stacked.calibrate(TensorBatches(planted.validation, 1000).batches(0))

    weights = stacked.ensemble.tasks[0].weight
    with torch.no_grad():
        spread = torch.stack(
            [m.model(planted.train.sparse, planted.train.dense).std() for m in (trained, noise)]
        )
    contribution = weights.abs() * spread  # how far each member moves the ensemble logit
    assert contribution[1] < 0.2 * contribution[0], contribution
    alone = auc(EMMModel(planted.schema, [trained], residual("mean")), planted.test, 0)
    assert auc(stacked, planted.test, 0) > auc(mean, planted.test, 0) + 0.02
    assert auc(stacked, planted.test, 0) > alone - 0.005
    mean.calibrate(TensorBatches(planted.validation, 1000).batches(0))  # no-op for `mean`
    assert not mean.ensemble.tasks[0].fitted and torch.equal(
        mean.ensemble.tasks[0].weight, torch.full((2,), 0.5)
    )


def test_calibration_reads_at_most_max_rows_and_fits_once() -> None:
    schema = planted_schema(2)
    pool = untrained_pool(schema, [("mlp", "task0", TINY["mlp"]), ("mlp", "task1", TINY["mlp"])])
    model = EMMModel(schema, pool, residual())
    seen: list[int] = []

    def batches():
        for seed in range(5):
            batch = planted_batch(schema, 400, seed=seed)
            seen.append(len(batch))
            yield batch

    model.calibrate(batches(), max_rows=1000)
    assert sum(seen) == 2000, "every batch is consumed, so a Ray Data shard ends its epoch"
    fitted = [e.weight.clone() for e in model.ensemble.tasks]
    assert all(bool(e.fitted) for e in model.ensemble.tasks)
    model.calibrate(planted_batch(schema, 100, seed=9) for _ in range(1))
    assert all(torch.equal(a, e.weight) for a, e in zip(fitted, model.ensemble.tasks, strict=True))


def test_members_plugged_in_later_leave_fitted_ensembles_as_they_were() -> None:
    schema = planted_schema(3)
    pool = untrained_pool(schema, [("mlp", "task0", TINY["mlp"]), ("mlp", "task1", TINY["mlp"])])
    model = EMMModel(schema, pool, residual())
    model.calibrate([planted_batch(schema, 2000, seed=0)])
    before = {k: v.clone() for k, v in model.ensemble.state_dict().items()}

    added = untrained_pool(
        schema, [("deepfm", "task1", TINY["deepfm"]), ("mlp", "task2", TINY["mlp"])]
    )
    model.add_members([PoolMember(f"late-{m.name}", m.model) for m in added])
    assert len(model.ensemble.tasks) == 3 and not model.ensemble.tasks[2].fitted
    model.calibrate([planted_batch(schema, 2000, seed=1)])
    after = model.ensemble.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert bool(model.ensemble.tasks[2].fitted) and model.ensemble.tasks[1].weight.shape == (1,)


def test_training_labels_of_one_class_name_the_task() -> None:
    schema = planted_schema(2)
    pool = untrained_pool(schema, [("mlp", "task1", TINY["mlp"])])
    model = EMMModel(schema, pool, residual())
    batch = planted_batch(schema, 500, seed=0)
    constant = Batch(batch.sparse, batch.dense, torch.zeros_like(batch.labels))
    with pytest.raises(DataError, match="'task1'.*both classes"):
        model.calibrate([constant])
    with pytest.raises(DataError, match="no rows"):
        model.calibrate([])


def test_a_pool_wide_stacking_reads_the_other_tasks_members(
    planted: Planted, planted_pool: list[PoolMember]
) -> None:
    """Each planted member saw only its own task's fields, and each task's label also
    needs the other task's table: the other task's member carries it, so a stacking
    over every member's logit starts above one over the task's own member."""
    own = EMMModel(planted.schema, planted_pool, residual())
    pool = EMMModel(planted.schema, planted_pool, residual(inputs="pool"))
    for model in (own, pool):
        model.calibrate(TensorBatches(planted.validation, 1000).batches(0))
    assert [len(e.weight) for e in pool.ensemble.tasks] == [2, 2]
    for column in (0, 1):
        assert auc(pool, planted.test, column) > auc(own, planted.test, column) + 0.01
        other = pool.ensemble.tasks[column].weight[1 - column]
        assert other > 0.2, "the other task's member carries part of this task's signal"


def test_a_pool_wide_stacking_is_fixed_when_members_are_plugged_in(tmp_path: Path) -> None:
    schema = planted_schema(3)
    pool = untrained_pool(schema, [("mlp", "task0", TINY["mlp"]), ("mlp", "task1", TINY["mlp"])])
    model = EMMModel(schema, pool, residual(inputs="pool"))
    model.calibrate([planted_batch(schema, 2000, seed=0)])
    before = {k: v.clone() for k, v in model.ensemble.state_dict().items()}
    added = untrained_pool(schema, [("mlp", "task2", TINY["mlp"])])
    model.add_members([PoolMember(f"late-{m.name}", m.model) for m in added])
    assert model.layout.ensemble_inputs == [[0, 1], [0, 1], [0, 1, 2]]
    model.calibrate([planted_batch(schema, 2000, seed=1)])
    after = model.ensemble.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())

    batch = planted_batch(schema, 40, seed=2)
    expected = model.eval()(batch.sparse, batch.dense)
    save_fused_model(model, tmp_path / "fused", "planted-emm", metrics={})
    loaded, _ = load_fused_model(tmp_path / "fused", expected_schema=schema)
    assert torch.equal(loaded(batch.sparse, batch.dense), expected)


@pytest.mark.parametrize("change", [{"ensemble": "mean"}, {"prediction": "tower"}])
def test_a_pool_wide_stacking_needs_a_fitted_stacked_start(change: dict[str, str]) -> None:
    settings = {"prediction": "pool_residual", "ensemble_inputs": "pool"} | change
    with pytest.raises(ValueError, match="ensemble_inputs 'pool'"):
        FusionConfig(**settings)
