"""emm-ray: fuse a pool of trained single-task models into one multi-task model (EMM) on Ray."""

from emm_ray.runtime import configure_environment

configure_environment()

__version__ = "0.1.0"
