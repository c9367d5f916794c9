"""Ray Serve deployment of a registered model: raw records in, a probability per task out.

`deploy(parse_settings({...}))` from Python, or `serve run serve_configs/<name>.yaml`.
"""

from emm_ray.serve.app import build_app, deploy
from emm_ray.serve.loading import load_registered
from emm_ray.serve.settings import ServeSettings, parse_settings

__all__ = ["ServeSettings", "build_app", "deploy", "load_registered", "parse_settings"]
