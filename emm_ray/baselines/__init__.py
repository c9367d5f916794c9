"""End-to-end multi-task baselines: Shared-Bottom, MMoE, PLE, ESMM, AITM.

`build_baseline(name, schema, tasks=None, **hparams)` builds one; each returns logits
`[B, T]` for its `task_names` (label columns `task_indices`) and trains in the generic
loop (AITM brings its calibration term through `compute_loss`). ESMM and AITM have a
funnel form (the papers') and a plain one (`funnel: false`); `labels_are_nested` tells
which one a task mix calls for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from emm_ray.baselines.aitm import AITM
from emm_ray.baselines.common import MultiTaskBaseline, labels_are_nested
from emm_ray.baselines.esmm import ESMM
from emm_ray.baselines.mmoe import MMoE
from emm_ray.baselines.ple import PLE
from emm_ray.baselines.shared_bottom import SharedBottom
from emm_ray.data.schema import FeatureSchema
from emm_ray.errors import ConfigError

BASELINES: dict[str, type[MultiTaskBaseline]] = {
    kind.name: kind for kind in (SharedBottom, MMoE, PLE, ESMM, AITM)
}


def build_baseline(
    name: str, schema: FeatureSchema, tasks: Sequence[str] | None = None, **hparams: Any
) -> MultiTaskBaseline:
    """A baseline by name, for `tasks` (default: all of the schema's tasks)."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[name](schema, tasks, **hparams)


__all__ = ["BASELINES", "MultiTaskBaseline", "build_baseline", "labels_are_nested"]
