"""Truly frozen modules: no gradients, always in eval mode, verifiable by checksum
(`AlignedMember.frozen_state` under `emm_ray.checksum.parameter_checksum`).

The reference froze its blocks with `requires_grad=False` only, so BatchNorm running
statistics kept drifting while the model trained. Here a frozen module also refuses to
leave eval mode, whatever `train()` its parent calls, so normalisation statistics and
dropout behave exactly as when the member was evaluated on its own.
"""

from __future__ import annotations

import torch
from torch import nn

FROZEN_ATTRIBUTE = "emm_frozen"


class Frozen(nn.Module):
    """Wraps a trained module: parameters never receive gradients, mode is always eval.

    Gradients still flow *through* it to its inputs, which is what lets the trainable
    adapters in front of a frozen component learn.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        freeze_(self)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)


def freeze_(module: nn.Module) -> nn.Module:
    """Turn off gradients of every parameter and mark the module frozen (kept in eval)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    setattr(module, FROZEN_ATTRIBUTE, True)
    module.eval()
    return module


def keep_frozen_in_eval(root: nn.Module) -> None:
    """Put every module marked frozen under `root` back into eval mode."""
    for module in root.modules():
        if getattr(module, FROZEN_ATTRIBUTE, False):
            nn.Module.train(module, False)
