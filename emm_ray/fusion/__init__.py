"""EMM fusion: decompose a pool of frozen single-task models, fuse it with AKF levels."""

from emm_ray.fusion.config import FusionConfig
from emm_ray.fusion.decompose import PoolMember
from emm_ray.fusion.model import EMMModel

__all__ = ["EMMModel", "FusionConfig", "PoolMember"]
