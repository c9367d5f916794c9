"""CPU and CUDA give the same model: no device-specific code, buffers move with the model."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from emm_ray.data.schema import FeatureSchema
from emm_ray.models import ARCHITECTURES, build_model

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.parametrize("architecture", sorted(ARCHITECTURES)),
]


def test_cuda_matches_cpu_and_trains(
    architecture: str, tiny_schema: FeatureSchema, tiny_inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    torch.manual_seed(0)
    model = build_model(architecture, tiny_schema, "click").eval()
    with torch.no_grad():
        on_cpu = model(*tiny_inputs)
        on_gpu = model.to("cuda")(*(t.to("cuda") for t in tiny_inputs))
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)
    model.train()
    sparse, dense = (t.to("cuda") for t in tiny_inputs)
    loss = functional.binary_cross_entropy_with_logits(
        model(sparse, dense), torch.ones(len(dense), device="cuda")
    )
    loss.backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in model.parameters())
