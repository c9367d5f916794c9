"""ESMM (Ma et al., SIGIR 2018): CTR and CVR towers over a shared embedding, CTCVR = CTR * CVR.

With `funnel` (the paper's form, the default) the first task is CTR (e.g. click) and the
second CTCVR (e.g. purchase, which implies a click). The second column of the output is
the logit of `p_ctr * p_cvr`, computed in log space, so the generic loop's BCE on it *is*
ESMM's CTCVR loss over the whole impression space; CVR itself is never supervised
directly (that is the point of ESMM).

The product forces `p_2 <= p_1`, which is wrong when the second task's positives are not
a subset of the first's (census: income vs never_married). `funnel: false` is the form
reference implementations run on such task mixes: each tower predicts its own task
directly, supervised on its own labels, over the shared embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emm_ray.baselines.common import BaselineHyperparameters, Head, MultiTaskBaseline, Widths

_MAX_LOG_PROBABILITY = -1e-7


class ESMMHyperparameters(BaselineHyperparameters):
    tower: Widths = (256, 128, 64)
    funnel: bool = True


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
        ctr, cvr = self.ctr(inputs), self.cvr(inputs)
        second = product_logit(ctr, cvr) if self.config.funnel else cvr
        return torch.stack([ctr, second], dim=1)
