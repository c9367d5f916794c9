"""The Ray Serve application: `serve run serve_configs/<name>.yaml` or `deploy(...)`.

`build_app` is the YAML's `import_path` (`emm_ray.serve.app:build_app`); its `args` are
`ServeSettings`. Replicas, autoscaling and actor resources are Serve's own keys under
`deployments:` (deployment name `EmmPredictor`). Each replica loads the model version
pinned when the application was built (`pin_version`: a version that fails to load is
refused there, before it can replace the one serving), then builds its FastAPI app from
that model's schema (`@serve.ingress()` with `__serve_build_asgi_app__`), so the OpenAPI
document shows the model's real fields.

Requests are validated and encoded one by one, then `@serve.batch` stacks the encoded
rows of concurrent requests into one forward (`max_batch_size` counts records), which is
where a multi-task model answering all tasks in one pass pays off.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from emm_ray.serve.api import build_api
from emm_ray.serve.loading import load_registered, pin_version
from emm_ray.serve.records import EncodedRecords
from emm_ray.serve.settings import ProxyLocation, ServeSettings, parse_settings

DEPLOYMENT_NAME = "EmmPredictor"


def _records(batch: list[EncodedRecords]) -> int:
    return sum(len(item) for item in batch)


@serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
@serve.ingress()
class EmmPredictor:
    """One replica: a registered model behind `POST /predict` and `GET /healthz`."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.servable, self.description = load_registered(
            settings.model_uri, settings.tracking_uri, settings.pinned_version
        )
        self.forward.set_max_batch_size(settings.max_batch_size)
        self.forward.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        import ray

        served_by = {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "node": ray.get_runtime_context().get_node_id(),
        }
        return build_api(self.servable, self.description, self.settings, self.forward, served_by)

    # The limits given here are replaced per replica from `ServeSettings` in `__init__`.
    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005, batch_size_fn=_records)
    async def forward(self, batch: list[EncodedRecords]) -> list[np.ndarray]:
        """Score the records of several requests in one model call; split per request."""
        sparse = np.concatenate([item.sparse for item in batch])
        dense = np.concatenate([item.dense for item in batch])
        probabilities = await asyncio.to_thread(self.servable.predict_proba, sparse, dense)
        return np.split(probabilities, np.cumsum([len(item) for item in batch])[:-1])


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for Serve YAML: validates `args` into `ServeSettings`, then
    loads and pins the model version (`pin_version`) before anything is deployed."""
    return EmmPredictor.bind(pin_version(parse_settings(args)))


def deploy(
    settings: ServeSettings,
    *,
    name: str = "emm",
    route_prefix: str = "/",
    host: str = "127.0.0.1",
    port: int = 8000,
    num_replicas: int = 1,
    num_cpus: float = 1.0,
    max_replicas_per_node: int | None = None,
    proxy_location: ProxyLocation = "EveryNode",
    access_log: bool = True,
) -> str:
    """Run the application on the connected Ray cluster; returns its base URL.

    Serve's HTTP proxy is started on `host:port` if it is not running yet; a proxy that
    already runs keeps its address, and the URL returned is that address. The model is
    loaded and verified here first (`pin_version`): if it fails, the application already
    running under `name` keeps serving.
    """
    from ray.serve.context import _get_global_client

    settings = pin_version(
        settings.model_copy(update={"tracking_uri": settings.resolved_tracking_uri()})
    )
    serve.start(proxy_location=proxy_location, http_options={"host": host, "port": port})
    application = EmmPredictor.options(
        num_replicas=num_replicas,
        max_replicas_per_node=max_replicas_per_node,
        ray_actor_options={"num_cpus": num_cpus},
        logging_config={"enable_access_log": access_log},
    ).bind(settings)
    serve.run(application, name=name, route_prefix=route_prefix)
    proxy = _get_global_client().http_config
    return f"http://{proxy.host}:{proxy.port}{route_prefix.rstrip('/')}"
