"""The one parameter checksum of emm-ray: artifacts, frozen checks and tests all use it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def parameter_checksum(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, raw bytes) of every tensor, in sorted name order.

    `state` is a `state_dict()` (parameters and persistent buffers) or any name -> tensor
    map. Independent of device and insertion order, so the same weights always give the
    same checksum, and any flipped bit gives another.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
