"""The ablations are settings of one model: ensemble only, MLP correction, no cross-task
path, full AKF; and after training each task keeps its correction only where it helps."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.train.loop import TensorBatches, seed_everything
from tests.fusion.conftest import Planted
from tests.fusion.planted import quick_config, train_module


def residual(**overrides: object) -> FusionConfig:
    values = {"d_model": 16, "heads": 2, "top_k": 1, "tower_hidden": (16,)}
    return FusionConfig(**{**values, "prediction": "pool_residual", **overrides})


def ensemble_only(planted: Planted, pool: list[PoolMember]) -> EMMModel:
    model = EMMModel(planted.schema, pool, residual(correction="none"))
    model.calibrate(TensorBatches(planted.validation, 1000).batches(0))
    return model.eval()


def logits(model: EMMModel, planted: Planted) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(planted.test.sparse, planted.test.dense)


def test_every_correction_starts_exactly_at_the_stacked_ensemble(
    planted: Planted, planted_pool: list[PoolMember]
) -> None:
    reference = ensemble_only(planted, planted_pool)
    assert not reference.trainable_parameters()
    start = logits(reference, planted)
    fresh = {"embedding": "fresh", "fresh_embedding_dim": 4}
    for overrides in ({"correction": "mlp"}, {"correction": "mlp", **fresh}, {"top_k": 0}, {}):
        model = EMMModel(planted.schema, planted_pool, residual(**overrides))
        model.load_state_dict(reference.state_dict(), strict=False)
        assert torch.equal(logits(model, planted), start), overrides


def test_mlp_correction_has_no_gates_no_adapters_and_no_cross_task_path(
    planted: Planted, planted_pool: list[PoolMember]
) -> None:
    model = EMMModel(planted.schema, planted_pool, residual(correction="mlp"))
    assert model.stack is None and model.heads is not None
    assert not any(hasattr(m, "output_adapters") for m in model.members)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"heads"}
    hidden = sum(m.hidden_width for m in model.members if m.task == "task0")
    assert model.heads.heads[0].mlp[0].in_features == hidden
    model.train()
    batch = planted.train.slice(slice(0, 256))
    out = model(batch.sparse, batch.dense)
    out[:, 0].sum().backward()  # task0's correction reads nothing of task1's members
    assert all(p.grad is None or not p.grad.any() for p in model.heads.heads[1].parameters())


def test_mlp_correction_with_a_fresh_embedding_reads_and_trains_it(
    planted: Planted, planted_pool: list[PoolMember]
) -> None:
    """The control for `embedding: fresh`: the same new input, no stack."""
    config = residual(correction="mlp", embedding="fresh", fresh_embedding_dim=4)
    model = EMMModel(planted.schema, planted_pool, config)
    fresh = model.heads.fresh_embedding
    hidden = sum(m.hidden_width for m in model.members if m.task == "task0")
    assert model.heads.heads[0].mlp[0].in_features == hidden + fresh.out_width
    with torch.no_grad():  # past the zero start, as after a first step
        for head in model.heads.heads:
            head.mlp[-1].weight.fill_(0.1)
    model.train()
    batch = planted.train.slice(slice(0, 256))
    model(batch.sparse, batch.dense).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fresh.parameters())


def test_top_k_zero_switches_the_cross_task_path_off(
    planted: Planted, planted_pool: list[PoolMember]
) -> None:
    model = EMMModel(planted.schema, planted_pool, residual(top_k=0))
    assert all(f.fusion_gate is None for level in model.stack.fusion for f in level)
    batch = planted.test.slice(slice(0, 64))
    _, records = model.run(batch.sparse, batch.dense)
    assert {r.gate for r in records} == {"task"}
    full = EMMModel(planted.schema, planted_pool, residual(top_k=1))
    _, records = full.run(batch.sparse, batch.dense)
    assert {r.gate for r in records} == {"task", "fusion", "attention"}


def test_attention_record_shows_what_the_merge_attended_to(
    planted: Planted, planted_pool: list[PoolMember]
) -> None:
    model = EMMModel(planted.schema, planted_pool, residual(top_k=1))
    batch = planted.test.slice(slice(0, 64))
    _, records = model.run(batch.sparse, batch.dense)
    for record in (r for r in records if r.gate == "attention"):
        assert record.candidates[0] == f"own:{record.task}"
        assert torch.allclose(record.weights.sum(1), torch.ones(len(batch)), atol=1e-5)
        assert not record.weights[~record.selected].any()  # unselected candidates get nothing


def test_configs_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValidationError, match="pool_residual"):
        FusionConfig(correction="none", prediction="tower")
    with pytest.raises(ValidationError, match="fresh embedding"):
        FusionConfig(correction="none", embedding="fresh", prediction="pool_residual")
    with pytest.raises(ValidationError):
        FusionConfig(top_k=-1)


def test_a_task_whose_correction_hurts_keeps_the_ensemble_the_other_keeps_its_own(
    planted: Planted, planted_pool: list[PoolMember]
) -> None:
    seed_everything(0)
    model = EMMModel(planted.schema, planted_pool, residual())
    train_module(
        model,
        planted.train,
        planted.validation,
        model.task_indices,
        quick_config(lr=5e-3, batch_size=512, epochs=8, validate_initial=True),
    )
    assert bool(model.ensemble.correction_mask().all()), "training should help both tasks here"
    with torch.no_grad():  # task1's correction turned against what it learned: must be dropped
        model.stack.towers[1].mlp[-1].weight.mul_(-50.0)
    choice = model.finish_training(TensorBatches(planted.validation, 1000).batches(0))
    assert choice["task0"]["kept"] and not choice["task1"]["kept"]
    assert choice["task1"]["corrected_auc"] < choice["task1"]["ensemble_auc"]
    assert model.ensemble.correction_mask().tolist() == [True, False]
    fused = logits(model, planted)
    start = logits(ensemble_only(planted, planted_pool), planted)
    assert torch.allclose(fused[:, 1], start[:, 1], atol=1e-6)  # task1 is the bare ensemble
    labels = planted.test.labels[:, model.task_indices]
    gain = roc_auc_score(labels[:, 0], fused[:, 0]) - roc_auc_score(labels[:, 0], start[:, 0])
    assert gain > 0.01  # task0 keeps what its correction earned
    reloaded = EMMModel(planted.schema, planted_pool, residual())
    reloaded.load_state_dict(model.state_dict())
    assert torch.equal(logits(reloaded, planted), fused)  # the choice is saved with the weights


def test_the_training_loop_makes_the_choice_on_the_weights_it_returns(
    planted: Planted, planted_pool: list[PoolMember]
) -> None:
    seed_everything(0)
    model = EMMModel(planted.schema, planted_pool, residual())
    with (
        torch.no_grad()
    ):  # task1 starts with a correction that hurts, and an lr too small to mend it
        tower = model.stack.towers[1].mlp
        tower[-1].weight.normal_(0.0, 1.0)
        tower[-1].weight.mul_(-50.0 * torch.sign(tower[-1].weight))
        tower[-1].bias.zero_()
    result = train_module(
        model,
        planted.train,
        planted.validation,
        model.task_indices,
        quick_config(lr=1e-9, batch_size=512, epochs=1, validate_initial=True),
    )
    assert not bool(model.ensemble.correction_mask()[1]), "the loop did not drop task1's correction"
    # what it reports is the model it returns: task1's AUC is the bare ensemble's now
    assert result.finish_report is not None and not result.finish_report["task1"]["kept"]
    assert result.final_metrics is not None
    assert result.final_metrics["val_auc_task1"] == pytest.approx(
        result.finish_report["task1"]["ensemble_auc"], abs=1e-6
    )
    assert result.final_metrics["val_auc_task1"] > result.best_metrics["val_auc_task1"]
    chosen = model.ensemble.correction_mask().tolist()
    with torch.no_grad():
        for ensemble in model.ensemble.tasks:  # undo the loop's choice, then choose again
            ensemble.correction_enabled.fill_(True)
    again = model.finish_training(TensorBatches(planted.validation, 1000).batches(0))
    assert [again[t]["kept"] for t in model.task_names] == chosen
