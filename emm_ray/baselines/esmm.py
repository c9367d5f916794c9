"""ESMM (Ma et al., SIGIR 2018): CTR and CVR towers over a shared embedding, CTCVR = CTR * CVR.

The first task is CTR (e.g. click), the second CTCVR (e.g. purchase, which implies a
click). The second column of the output is the logit of `p_ctr * p_cvr`, computed in log
space, so the generic loop's BCE on it *is* ESMM's CTCVR loss over the whole impression
space; CVR itself is never supervised directly (that is the point of ESMM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emm_ray.baselines.common import BaselineHyperparameters, Head, MultiTaskBaseline, Widths

_MAX_LOG_PROBABILITY = -1e-7


class ESMMHyperparameters(BaselineHyperparameters):
    tower: Widths = (256, 128, 64)


def product_logit(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """`logit(sigmoid(first) * sigmoid(second))`, stable for large magnitudes."""
    log_p = (F.logsigmoid(first) + F.logsigmoid(second)).clamp(max=_MAX_LOG_PROBABILITY)
    log_not_p = torch.where(
        log_p > -0.6931471805599453, torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p))
    )
    return log_p - log_not_p


class ESMM(MultiTaskBaseline):
    name = "esmm"
    Hyperparameters = ESMMHyperparameters
    min_tasks = 2
    max_tasks = 2

    def build(self, config: ESMMHyperparameters) -> None:
        self.ctr = Head(self.input.out_width, config.tower, config.dropout)
        self.cvr = Head(self.input.out_width, config.tower, config.dropout)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        inputs = self.input(sparse, dense)
        ctr = self.ctr(inputs)
        return torch.stack([ctr, product_logit(ctr, self.cvr(inputs))], dim=1)
