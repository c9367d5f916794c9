"""Ray Tune search over the fusion architecture (tune_spaces/*.yaml), best model registered."""

from emm_ray.tune.registry import register_artifact
from emm_ray.tune.runner import SearchOutcome, TrialSummary, run_search
from emm_ray.tune.space import TuneSpec, load_tune_spec

__all__ = [
    "SearchOutcome",
    "TrialSummary",
    "TuneSpec",
    "load_tune_spec",
    "register_artifact",
    "run_search",
]
