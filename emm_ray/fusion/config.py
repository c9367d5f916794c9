"""How a pool is fused: the options of the EMM model, loaded from YAML.

Two variants share one model skeleton. `emm` is emm-ray's method (differentiable top-k
fusion gate, Transformer-block merge); `reference` reproduces the authors' formulation
(hard-argmax fusion gate over tasks, single-head per-token-score merge without residual
or LayerNorm). The other options are independent of the variant, so each ingredient can
be measured on its own; `configs/fusion/reference.yaml` sets the reference's choices.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from emm_ray.config import StrictModel

PositiveInt = Annotated[int, Field(ge=1)]


class FusionConfig(StrictModel):
    """Shape of the AKF stack and of what feeds it.

    - `levels`: number of aligned levels L; `None` derives it as the smallest number of
      blocks in the pool (so every member contributes a component at every level).
    - `embedding`: `pool` reuses each member's own trained embedding, frozen; `fresh`
      learns one new embedding shared by all members (the reference's choice); with
      `correction: mlp` the MLP correction reads that fresh embedding beside the members'
      states.
    - `component_input`: what feeds a member's component at level l+1. `residual` gives it
      its own previous component's output plus a zero-initialised adapter of its task's
      fused state (so at initialisation every member runs exactly as trained, and fusion
      only adds to it); `fused` gives it only the adapted fused state (the reference);
      `none` feeds it only its own previous output: the frozen pool runs once, exactly
      as trained, and the task's fused state reaches the next level as the gates'
      context and added to the task's own mixture before the merge. Every component
      output then depends on the rows alone, so the whole pool is precomputed once per
      split and a training step runs only the fusion parameters (`emm_ray.fusion.model`).
    - `top_k`: other-task components the fusion gate keeps per task and level; 0 turns
      the cross-task path off (own-task components only).
    - `prediction`: `pool_residual` adds each task's tower output to the ensemble logit
      of the task's own pool members (computed by the frozen members end to end) and
      zero-initialises the tower's last layer, so the untrained fused model predicts
      exactly the pool's ensemble and fusion learns a correction; `tower` predicts from
      the tower alone (the reference).
    - `ensemble` (with `pool_residual`): how the task's members combine at the start.
      `mean` averages their logits; `stacked` fits a logistic regression on them over
      the validation rows before training (`emm_ray.fusion.ensemble`).
    - `ensemble_inputs` (with `stacked`): whose logits a task's stacking reads. `own` its
      own founding members; `pool` every founding member of every task. Why `pool`: where
      tasks are related, another task's member can carry what a task's own members lack;
      on funnel data a rare task (CTCVR) is mostly its parent's propensity (CTR) times a
      conversion rate, and the parent's members learned that propensity from far more
      positives than the rare task's own members ever saw.
    - `correction`: what learns the prediction beyond the ensemble. `akf` is the AKF
      stack; `mlp` a plain MLP per task (widths `tower_hidden`) on its own members' last
      hidden states, with no gates and no cross-task path (the control the stack is
      measured against); `none` keeps the ensemble alone (nothing to train).
    """

    variant: Literal["emm", "reference"] = "emm"
    levels: PositiveInt | None = None
    d_model: PositiveInt = 64
    heads: PositiveInt = 4
    ffn_multiplier: PositiveInt = 2
    top_k: Annotated[int, Field(ge=0)] = 2
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    embedding: Literal["pool", "fresh"] = "pool"
    fresh_embedding_dim: PositiveInt = 16
    component_input: Literal["residual", "fused", "none"] = "residual"
    tower_hidden: tuple[PositiveInt, ...] = (64,)
    prediction: Literal["pool_residual", "tower"] = "tower"
    ensemble: Literal["mean", "stacked"] = "stacked"
    ensemble_inputs: Literal["own", "pool"] = "own"
    correction: Literal["akf", "mlp", "none"] = "akf"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> FusionConfig:
        if self.variant == "emm" and self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.correction == "none" and self.prediction != "pool_residual":
            raise ValueError("correction 'none' predicts the ensemble: it needs pool_residual")
        if self.ensemble_inputs == "pool" and (
            self.ensemble != "stacked" or self.prediction != "pool_residual"
        ):
            raise ValueError(
                "ensemble_inputs 'pool' weighs every member's logit by a fitted stacking: "
                "it needs ensemble 'stacked' and prediction 'pool_residual'"
            )
        if self.embedding == "fresh" and self.correction == "none":
            raise ValueError(
                "a fresh embedding feeds a correction: it needs correction 'akf' or 'mlp'"
            )
        if self.component_input == "none" and self.embedding == "fresh":
            raise ValueError(
                "component_input 'none' runs the pool exactly as trained, on its own "
                "embeddings: it needs embedding 'pool'"
            )
        return self
