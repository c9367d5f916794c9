"""End-to-end baselines: each learns planted signal, returns [B, T], refuses bad configs;
ESMM and AITM take their funnel form only for nested labels."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from emm_ray.baselines import BASELINES, build_baseline, labels_are_nested
from emm_ray.baselines.esmm import product_logit
from emm_ray.baselines.stage import BaselineSpec, train_labels_nested
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.errors import ConfigError
from emm_ray.evaluation.metrics import score_module
from emm_ray.train.loop import seed_everything
from tests.fusion.planted import planted_batch, planted_schema, quick_config, train_module

SMALL = {
    "shared_bottom": {"embed_dim": 8, "bottom": (32,), "tower": (8,)},
    "mmoe": {"embed_dim": 8, "experts": 3, "expert_hidden": (16,), "tower": (8,)},
    "ple": {"embed_dim": 8, "levels": 2, "expert_hidden": (16,), "tower": (8,)},
    "esmm": {"embed_dim": 8, "tower": (32, 16)},
    "aitm": {"embed_dim": 8, "tower": (32, 16)},
}


def test_every_baseline_has_a_small_config() -> None:
    assert set(SMALL) == set(BASELINES) == {"shared_bottom", "mmoe", "ple", "esmm", "aitm"}


CONFIGS = [pytest.param(name, SMALL[name], id=name) for name in sorted(SMALL)] + [
    pytest.param(name, {**SMALL[name], "funnel": False}, id=f"{name}-no_funnel")
    for name in ("aitm", "esmm")
]


@pytest.mark.parametrize(("name", "hparams"), CONFIGS)
def test_baseline_learns_planted_signal_on_tiny_data(name: str, hparams: dict[str, Any]) -> None:
    schema = planted_schema(2)
    train, validation = planted_batch(schema, 3000, seed=1), planted_batch(schema, 2000, seed=2)
    seed_everything(0)
    model = build_baseline(name, schema, **hparams)
    assert model.task_names == ["task0", "task1"] and model.task_indices == [0, 1]
    assert model(train.sparse[:7], train.dense[:7]).shape == (7, 2)
    config = quick_config(epochs=12, batch_size=256, patience=None)
    train_module(model, train, validation, model.task_indices, config)
    rows = score_module(name, "baseline", model, validation, [0, 1], model.task_names)
    assert all(row.auc > 0.6 for row in rows), rows


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe", "ple", "aitm"])
def test_baselines_take_any_number_of_tasks(name: str) -> None:
    schema = planted_schema(3)
    model = build_baseline(name, schema, **SMALL[name])
    batch = planted_batch(schema, 9, seed=0)
    logits = model(batch.sparse, batch.dense)
    assert logits.shape == (9, 3)
    subset = build_baseline(name, schema, ["task2", "task0"], **SMALL[name])
    assert subset.task_indices == [2, 0] and subset(batch.sparse, batch.dense).shape == (9, 2)


def test_esmm_second_output_is_the_product_of_ctr_and_cvr() -> None:
    first = torch.tensor([-30.0, -2.0, 0.0, 3.0, 40.0, 40.0])
    second = torch.tensor([5.0, 1.0, 0.0, -4.0, 40.0, -60.0])
    product = torch.sigmoid(first.double()) * torch.sigmoid(second.double())
    logit = product_logit(first, second)
    assert torch.isfinite(logit).all()
    torch.testing.assert_close(torch.sigmoid(logit.double())[:5], product[:5], rtol=1e-5, atol=1e-9)
    assert torch.sigmoid(logit[-1].double()) < 1e-20
    schema = planted_schema(2)
    model = build_baseline("esmm", schema, **SMALL["esmm"])
    batch = planted_batch(schema, 16, seed=0)
    logits = model(batch.sparse, batch.dense)
    inputs = model.input(batch.sparse, batch.dense)
    expected = torch.sigmoid(model.ctr(inputs)) * torch.sigmoid(model.cvr(inputs))
    torch.testing.assert_close(torch.sigmoid(logits[:, 1]), expected)
    assert torch.all(torch.sigmoid(logits[:, 1]) <= torch.sigmoid(logits[:, 0]))


def test_aitm_loss_adds_the_calibration_penalty_only_when_order_is_violated() -> None:
    schema = planted_schema(2)
    model = build_baseline("aitm", schema, calibration_weight=0.5, **SMALL["aitm"])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    ordered = torch.tensor([[2.0, -1.0], [0.0, -3.0]])
    violated = torch.tensor([[-1.0, 2.0], [0.0, -3.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(model.compute_loss(ordered, labels), bce(ordered, labels))
    penalty = (torch.sigmoid(torch.tensor(2.0)) - torch.sigmoid(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(
        model.compute_loss(violated, labels), bce(violated, labels) + 0.5 * penalty
    )


def test_esmm_without_funnel_predicts_each_task_from_its_own_tower() -> None:
    schema = planted_schema(2)
    model = build_baseline("esmm", schema, funnel=False, **SMALL["esmm"])
    batch = planted_batch(schema, 16, seed=0)
    logits = model(batch.sparse, batch.dense)
    inputs = model.input(batch.sparse, batch.dense)
    torch.testing.assert_close(logits[:, 0], model.ctr(inputs))
    torch.testing.assert_close(logits[:, 1], model.cvr(inputs))
    assert model.hparams["funnel"] is False


def test_aitm_without_funnel_has_plain_bce_loss_and_keeps_the_transfer() -> None:
    schema = planted_schema(2)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    violated = torch.tensor([[-1.0, 2.0], [0.0, 3.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(violated, labels)
    plain = build_baseline("aitm", schema, funnel=False, calibration_weight=0.5, **SMALL["aitm"])
    funnel = build_baseline("aitm", schema, calibration_weight=0.5, **SMALL["aitm"])
    torch.testing.assert_close(plain.compute_loss(violated, labels), bce)
    sigmoid = torch.sigmoid(violated)
    penalty = (sigmoid[:, 1] - sigmoid[:, 0]).mean()
    torch.testing.assert_close(funnel.compute_loss(violated, labels), bce + 0.5 * penalty)
    assert len(plain.transfers) == len(plain.attention) == 1
    assert set(plain.state_dict()) == set(funnel.state_dict())


def test_labels_are_nested_only_when_each_tasks_positives_lie_within_the_previous() -> None:
    funnel = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert labels_are_nested(funnel)
    assert labels_are_nested(funnel[:, :1]) and labels_are_nested(funnel[:0])
    assert not labels_are_nested(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # overlap, no subset
    assert not labels_are_nested(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))  # 3 in 1 only
    assert not labels_are_nested(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))  # superset
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        labels_are_nested(torch.ones(3))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PreparedDataset]:
    root = tmp_path_factory.mktemp("prepared")
    return {
        name: prepare_dataset(DatasetConfig(name=name, rows=3000, seed=0), root / name)
        for name in ("census", "ali_ccp")
    }


def test_stage_picks_the_funnel_form_from_the_training_labels(
    prepared: dict[str, PreparedDataset],
) -> None:
    census, ali_ccp = prepared["census"], prepared["ali_ccp"]
    assert not train_labels_nested(census, ("income", "never_married"))
    assert train_labels_nested(ali_ccp, ("ctr", "ctcvr"))
    assert not train_labels_nested(ali_ccp, ("ctcvr", "ctr"))
    spec = BaselineSpec(names=("mmoe", "esmm", "aitm"), hparams={"aitm": {"funnel": True}})
    assert spec.unset_funnel() == ["esmm"]
    assert spec.full_hparams("esmm", nested_labels=False)["funnel"] is False
    assert spec.full_hparams("esmm", nested_labels=True)["funnel"] is True
    assert spec.full_hparams("esmm")["funnel"] is True
    assert spec.full_hparams("aitm", nested_labels=False)["funnel"] is True
    assert "funnel" not in spec.full_hparams("mmoe", nested_labels=False)


def test_bad_baseline_configs_name_what_is_wrong() -> None:
    schema = planted_schema(3)
    with pytest.raises(ConfigError, match="unknown baseline 'ple2'"):
        build_baseline("ple2", schema)
    with pytest.raises(ConfigError, match="'esmm' needs 2 tasks"):
        build_baseline("esmm", schema)
    with pytest.raises(
        ConfigError, match=r"experts_count: unknown hyperparameter.*valid hyperparameters"
    ):
        build_baseline("mmoe", schema, experts_count=3)
