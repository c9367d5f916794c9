"""The generic loop: learns planted signal, early-stops to the best epoch, repeats, resumes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from emm_ray.data.batch import Batch
from emm_ray.errors import DataError, EmmError
from emm_ray.train.loop import (
    EpochEnd,
    TensorBatches,
    TrainConfig,
    TrainingDivergedError,
    evaluate,
    fit,
    inference_batch_size,
    predict_logits,
    seed_everything,
)

CARDINALITIES = [10, 7, 5]


class TinyNet(nn.Module):
    """Embedding + MLP with one logit per task: enough to learn the planted signal."""

    def __init__(self, num_tasks: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0, 10, 17]))
        self.embedding = nn.Embedding(sum(CARDINALITIES), 4)
        self.body = nn.Sequential(nn.Linear(3 * 4 + 2, 16), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.Linear(16, num_tasks)
        self.num_tasks = num_tasks

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        state = torch.cat([self.embedding(sparse + self.offsets).flatten(1), dense], dim=1)
        logits = self.heads(self.body(state))
        return logits.squeeze(-1) if self.num_tasks == 1 else logits


def planted(rows: int, seed: int) -> tuple[Batch, torch.Tensor]:
    """Labels drawn from known probabilities: task 0 from sparse field 0 and dense 0,
    task 1 from sparse field 1. Returns the batch and the true probabilities `[N, 2]`."""
    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, c, (rows,), generator=g) for c in CARDINALITIES], 1)
    dense = torch.randn(rows, 2, generator=g)
    weight = torch.linspace(-2.5, 2.5, 10)
    p0 = torch.sigmoid(weight[sparse[:, 0]] + 1.5 * dense[:, 0])
    p1 = torch.sigmoid(torch.linspace(-2, 2, 7)[sparse[:, 1]])
    probs = torch.stack([p0, p1], 1)
    labels = torch.bernoulli(probs, generator=g)
    return Batch(sparse, dense, labels), probs


def sources(train: Batch, validation: Batch, config: TrainConfig):
    return (
        TensorBatches(train, config.batch_size, shuffle=True, seed=config.seed),
        TensorBatches(validation, config.eval_batch_size_on("cpu")),
    )


def test_learns_planted_signal_close_to_the_oracle_auc() -> None:
    from sklearn.metrics import roc_auc_score

    train, _ = planted(20_000, seed=1)
    validation, true_probs = planted(5_000, seed=2)
    config = TrainConfig(epochs=4, batch_size=512, lr=5e-3, patience=None)
    seed_everything(0)
    module = TinyNet(num_tasks=2)
    result = fit(module, *sources(train, validation, config), [0, 1], config, task_names=["a", "b"])
    oracle = [roc_auc_score(validation.labels[:, t], true_probs[:, t]) for t in (0, 1)]
    best = result.best_metrics
    assert best["val_auc_a"] > oracle[0] - 0.02, (best, oracle)
    assert best["val_auc_b"] > oracle[1] - 0.02, (best, oracle)
    assert best["val_auc_a"] > 0.8
    assert result.history[0]["train_samples_per_s"] > 0


def test_single_task_subset_selects_its_label_column() -> None:
    """task_indices=[1] trains on label column 1: high AUC there, none against column 0."""
    train, _ = planted(10_000, seed=1)
    validation, _ = planted(4_000, seed=2)
    config = TrainConfig(epochs=3, batch_size=512, lr=5e-3, patience=None)
    seed_everything(0)
    module = TinyNet(num_tasks=1)
    result = fit(module, *sources(train, validation, config), [1], config, task_names=["b"])
    assert result.best_score > 0.7
    wrong = evaluate(module, TensorBatches(validation, 4096), [0], ["a"])
    assert wrong["auc"] < 0.6


def test_early_stopping_restores_the_best_epoch_weights() -> None:
    """Validation labels are the training labels flipped: every epoch of learning makes
    validation worse, so epoch 1 is best and patience 2 stops after epoch 3."""
    train, _ = planted(8_000, seed=1)
    validation, _ = planted(2_000, seed=2)
    flipped = Batch(validation.sparse, validation.dense, 1 - validation.labels)
    config = TrainConfig(epochs=10, batch_size=256, lr=1e-2, patience=2)
    seed_everything(0)
    module = TinyNet()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def remember(end: EpochEnd) -> None:
        snapshots[end.state.epoch] = copy.deepcopy(module.state_dict())

    result = fit(module, *sources(train, flipped, config), [0], config, on_epoch=remember)
    assert result.best_epoch == 1
    assert len(result.history) == 3 and result.stopped_early
    aucs = [h["val_auc"] for h in result.history]
    assert aucs[0] > aucs[1] and aucs[0] > aucs[2]
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, snapshots[1][name]), name
        assert torch.equal(result.best_state[name], snapshots[1][name]), name
    rescored = evaluate(module, TensorBatches(flipped, 4096), [0], ["task0"])
    assert rescored["auc"] == pytest.approx(result.best_score, abs=1e-9)


def test_validate_initial_keeps_the_starting_point_when_no_epoch_beats_it() -> None:
    """With flipped validation labels every epoch of training is worse than where the
    model started, so `validate_initial` returns the untouched initial weights (epoch 0)."""
    train, _ = planted(8_000, seed=1)
    validation, _ = planted(2_000, seed=2)
    flipped = Batch(validation.sparse, validation.dense, 1 - validation.labels)
    config = TrainConfig(epochs=3, batch_size=256, lr=1e-2, patience=2, validate_initial=True)
    seed_everything(0)
    module = TinyNet()
    with torch.no_grad():  # a start that is good on the flipped labels
        module.heads.weight.copy_(-module.heads.weight.sign())
    start = copy.deepcopy(module.state_dict())
    initial = evaluate(module, TensorBatches(flipped, 4096), [0], ["task0"])

    result = fit(module, *sources(train, flipped, config), [0], config)

    assert result.best_epoch == 0
    assert result.best_metrics["val_auc"] == pytest.approx(initial["auc"], abs=1e-12)
    assert all(h["val_auc"] < initial["auc"] for h in result.history)
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, start[name]), name


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    train, _ = planted(4_000, seed=1)
    validation, _ = planted(1_000, seed=2)

    def run(seed: int) -> dict[str, torch.Tensor]:
        config = TrainConfig(epochs=2, batch_size=256, seed=seed, patience=None)
        seed_everything(seed)
        module = TinyNet(dropout=0.2)
        return fit(module, *sources(train, validation, config), [0], config).best_state

    first, again, other = run(3), run(3), run(4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_resume_from_an_epoch_checkpoint_matches_the_uninterrupted_run() -> None:
    train, _ = planted(4_000, seed=1)
    validation, _ = planted(1_000, seed=2)
    config = TrainConfig(epochs=3, batch_size=256, patience=None)
    saved: dict[int, dict] = {}

    def keep(end: EpochEnd) -> None:
        saved[end.state.epoch] = copy.deepcopy(end.resume_state())

    seed_everything(0)
    full = fit(
        TinyNet(dropout=0.2), *sources(train, validation, config), [0], config, on_epoch=keep
    )
    seed_everything(123)  # a different initialisation: resuming must overwrite it
    resumed = fit(
        TinyNet(dropout=0.2), *sources(train, validation, config), [0], config, resume=saved[2]
    )
    assert [h["val_auc"] for h in resumed.history] == [h["val_auc"] for h in full.history]
    assert all(torch.equal(full.best_state[k], resumed.best_state[k]) for k in full.best_state)


class Calibrated(TinyNet):
    """Records how many rows each `calibrate` pass the loop gives it has."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[int] = []

    def calibrate(self, batches) -> None:
        self.passes.append(sum(len(batch) for batch in batches))


def test_calibrate_gets_one_pass_over_the_validation_rows_before_training_not_on_resume() -> None:
    train, _ = planted(1_000, seed=1)
    validation, _ = planted(500, seed=2)
    config = TrainConfig(epochs=2, batch_size=256, patience=None)
    saved: list[dict] = []
    first = Calibrated()
    fit(
        first,
        *sources(train, validation, config),
        [0],
        config,
        on_epoch=lambda end: saved.append(copy.deepcopy(end.resume_state())),
    )
    assert first.passes == [500]
    resumed = Calibrated()
    fit(resumed, *sources(train, validation, config), [0], config, resume=saved[0])
    assert resumed.passes == []


class HalfFrozen(TinyNet):
    """Task 1's head is frozen and its loss ignored through the `compute_loss` hook."""

    def __init__(self) -> None:
        super().__init__(num_tasks=2)
        self.frozen = nn.Linear(2, 1)
        self.frozen.requires_grad_(False)
        self.calls = 0

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return super().forward(sparse, dense) + self.frozen(dense)

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels[:, 0])


def test_frozen_parameters_stay_and_the_loss_hook_is_used() -> None:
    train, _ = planted(2_000, seed=1)
    validation, _ = planted(1_000, seed=2)
    config = TrainConfig(epochs=1, batch_size=256, patience=None)
    seed_everything(0)
    module = HalfFrozen()
    frozen_before = copy.deepcopy(module.frozen.state_dict())
    head_before = module.heads.weight.detach().clone()
    fit(module, *sources(train, validation, config), [0, 1], config)
    assert module.calls == len(range(0, 2_000, 256))
    assert all(torch.equal(frozen_before[k], v) for k, v in module.frozen.state_dict().items())
    assert torch.equal(module.heads.weight[1], head_before[1])  # only the hook's task learns
    assert not torch.equal(module.heads.weight[0], head_before[0])


class Diverging(TinyNet):
    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return super().forward(sparse, dense) * float("inf")


def test_non_finite_loss_is_a_clear_error() -> None:
    train, _ = planted(1_000, seed=1)
    config = TrainConfig(epochs=1, batch_size=256)
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        fit(Diverging(), *sources(train, train, config), [0], config)


def test_single_class_validation_names_the_task() -> None:
    train, _ = planted(1_000, seed=1)
    constant = Batch(train.sparse, train.dense, torch.zeros_like(train.labels))
    config = TrainConfig(epochs=1, batch_size=256)
    with pytest.raises(DataError, match="'income'.*AUC is undefined"):
        fit(TinyNet(), *sources(train, constant, config), [0], config, task_names=["income"])


def test_a_fully_frozen_module_is_refused() -> None:
    train, _ = planted(500, seed=1)
    module = TinyNet().requires_grad_(False)
    config = TrainConfig(epochs=1)
    with pytest.raises(EmmError, match="no trainable parameters"):
        fit(module, *sources(train, train, config), [0], config)


def test_scoring_chunks_default_to_the_device_and_give_the_same_logits() -> None:
    assert inference_batch_size("cpu") == 4096
    assert inference_batch_size(torch.device("cuda")) == 65536
    assert inference_batch_size("cpu", 500) == 500
    assert TrainConfig().eval_batch_size_on("cuda") == 65536
    assert TrainConfig(eval_batch_size=128).eval_batch_size_on("cpu") == 128

    data, _ = planted(9000, seed=2)
    module = TinyNet().eval()
    whole, _ = predict_logits(module, TensorBatches(data, len(data)), 1)
    chunked, labels = predict_logits(module, TensorBatches(data, inference_batch_size("cpu")), 1)
    torch.testing.assert_close(chunked, whole)
    assert torch.equal(labels, data.labels)
