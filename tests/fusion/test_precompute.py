"""What the frozen pool computes from the rows alone is computed once and reused: cached
and uncached forwards give the same logits and gradients, and so does a whole training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emm_ray.fusion import EMMModel, FusionConfig
from emm_ray.train.loop import TensorBatches, fit, seed_everything, with_precomputed
from tests.fusion.planted import planted_batch, planted_schema, quick_config, untrained_pool
from tests.fusion.test_decompose import TINY

CONFIGS = {
    "emm": {"prediction": "pool_residual"},
    "no-cross-task": {"prediction": "pool_residual", "top_k": 0},
    "frozen-pool": {"prediction": "pool_residual", "component_input": "none"},
    "mlp-correction": {"prediction": "pool_residual", "correction": "mlp"},
    "fresh-embedding": {"prediction": "pool_residual", "embedding": "fresh"},
    "reference": {"variant": "reference", "embedding": "fresh", "component_input": "fused"},
    "tower": {"prediction": "tower"},
}


def heterogeneous_model(overrides: dict[str, object]) -> EMMModel:
    schema = planted_schema(3)
    specs = [(a, f"task{i % 3}", TINY[a]) for i, a in enumerate(sorted(TINY))]
    seed_everything(0)
    pool = untrained_pool(schema, specs)
    values = {"d_model": 8, "heads": 2, "top_k": 2, "fresh_embedding_dim": 4, **overrides}
    model = EMMModel(schema, pool, FusionConfig(**values))
    for parameter in model.trainable_parameters():  # zero-initialised paths carry signal too
        with torch.no_grad():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_and_uncached_forwards_give_the_same_logits_and_gradients(name: str) -> None:
    model = heterogeneous_model(CONFIGS[name]).train()
    batch = planted_batch(model.schema, 64, seed=0)
    cached = model.precompute(batch.sparse, batch.dense)
    assert all(not t.requires_grad for t in cached.values())
    stored = {name: cached[name] for name in model.stored_names()}  # what streams carry
    assert all(name.startswith("logit.") for name in stored)
    gradients = []
    outputs = []
    for extra in ((), (cached,), (stored,)):
        model.zero_grad(set_to_none=True)
        logits = model(batch.sparse, batch.dense, *extra)
        F.binary_cross_entropy_with_logits(logits, batch.labels[:, model.task_indices]).backward()
        outputs.append(logits.detach())
        # the reference's hard-argmax gate gets no gradient either way: None on both sides
        gradients.append([p.grad for p in model.trainable_parameters()])
    assert any(g is not None for g in gradients[0])
    for output, grads in zip(outputs[1:], gradients[1:], strict=True):
        torch.testing.assert_close(output, outputs[0], rtol=0, atol=1e-6)
        for cached_grad, fresh_grad in zip(grads, gradients[0], strict=True):
            assert (cached_grad is None) == (fresh_grad is None)
            if fresh_grad is not None:
                torch.testing.assert_close(cached_grad, fresh_grad, rtol=1e-5, atol=1e-7)


def test_the_pool_residual_model_caches_its_level0_outputs_and_member_logits() -> None:
    model = heterogeneous_model(CONFIGS["emm"])
    batch = planted_batch(model.schema, 16, seed=0)
    cached = model.precompute(batch.sparse, batch.dense)
    members = range(len(model.members))
    assert set(cached) == {f"level0.{i}" for i in members} | {f"logit.{i}" for i in members}
    assert set(cached) == set(model.precompute_names())
    for i, member in enumerate(model.members):
        hidden, logit = member.native(member.embed(batch.sparse, batch.dense))
        torch.testing.assert_close(cached[f"logit.{i}"], logit, rtol=0, atol=0)


def test_training_with_the_cache_equals_training_without_it() -> None:
    schema = planted_schema(3)
    train = planted_batch(schema, 1200, seed=1)
    validation = planted_batch(schema, 600, seed=2)
    results = []
    for precompute in (False, True):
        model = heterogeneous_model(CONFIGS["emm"])
        config = quick_config(epochs=3, batch_size=256, lr=1e-3, precompute=precompute)
        result = fit(
            model,
            TensorBatches(train, config.batch_size, shuffle=True, seed=0),
            TensorBatches(validation, 300),
            model.task_indices,
            config,
        )
        results.append(result)
    uncached, cached = results
    assert [h["val_auc"] for h in cached.history] == pytest.approx(
        [h["val_auc"] for h in uncached.history], abs=1e-6
    )
    for name, tensor in uncached.best_state.items():
        torch.testing.assert_close(cached.best_state[name], tensor, rtol=1e-4, atol=1e-6)


def test_a_split_is_precomputed_once_and_keeps_its_rows_in_step() -> None:
    model = heterogeneous_model(CONFIGS["emm"]).eval()
    data = planted_batch(model.schema, 500, seed=3)
    source = with_precomputed(TensorBatches(data, 128, shuffle=True), model.precompute, "cpu")
    assert with_precomputed(source, model.precompute, "cpu") is source
    for batch in source.batches(epoch=1):  # shuffled: each row's features move with it
        fresh = model.precompute(batch.sparse, batch.dense)
        for name, tensor in fresh.items():
            torch.testing.assert_close(batch.cached[name], tensor, rtol=0, atol=1e-6)


def test_with_component_input_none_a_step_runs_no_frozen_component() -> None:
    """Every level is stored; a step only gathers the embeddings its level-0 gates read."""
    model = heterogeneous_model(CONFIGS["frozen-pool"]).train()
    batch = planted_batch(model.schema, 32, seed=0)
    cached = model.precompute(batch.sparse, batch.dense)
    levels = {f"level{level}.{i}" for level in range(model.num_levels) for i in range(6)}
    assert levels <= set(cached)
    calls = []
    hooks = [
        frozen.register_forward_hook(lambda *_: calls.append(1))
        for member in model.members
        for frozen in (*member.components, member.tower)
    ]
    try:
        model(batch.sparse, batch.dense, cached)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [], "a training step with stored features ran a frozen component"


def test_a_model_that_kept_the_ensemble_everywhere_does_not_run_its_correction() -> None:
    model = heterogeneous_model(CONFIGS["emm"]).eval()
    batch = planted_batch(model.schema, 32, seed=0)
    for ensemble in model.ensemble.tasks[:2]:
        ensemble.correction_enabled.fill_(False)
    stack_calls = []
    hook = model.stack.register_forward_hook(lambda *_: stack_calls.append(1))
    try:
        some_kept = model(batch.sparse, batch.dense)
        assert stack_calls, "one task still keeps its correction: the stack must run"
        model.ensemble.tasks[2].correction_enabled.fill_(False)
        stack_calls.clear()
        none_kept = model(batch.sparse, batch.dense)
        assert stack_calls == []
    finally:
        hook.remove()
    full = model.parts(batch.sparse, batch.dense, trace=False)
    torch.testing.assert_close(none_kept, full.logits, rtol=0, atol=0)
    torch.testing.assert_close(none_kept[:, :2], some_kept[:, :2], rtol=0, atol=0)
