"""Process environment and Ray start-up shared by every stage.

Ray reads these variables at import/start time, so they are set when `emm_ray` is
imported (before any `import ray` in our code) and passed to workers via the runtime env.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

RAY_ENV: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
    # Ray Train restarts a worker group not up within 60 s; on a busy 2-core node, several
    # members' workers importing torch at once take longer, and each restart adds load.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
}

# Where the tracking server and the object store are, as the driver has them. Secrets
# (AWS keys, MLflow passwords) are not forwarded: a runtime env is readable by anyone
# with access to the job API; nodes get credentials from their own environment or role.
# Node-local settings (EMM_NODE_CACHE, EMM_DATA_DIR) stay each node's own.
FORWARDED = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a submitted job's driver


def configure_environment() -> None:
    """Set Ray's variables unless the user set them; keeps local Ray on loopback, offline."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    worker_logs: bool = True,
) -> None:
    """Attach to `RAY_ADDRESS` (e.g. under `ray job submit`) or start a local Ray.

    A local start binds 127.0.0.1 and leaves the dashboard off: nothing here needs it,
    and it costs ~1 GB and seconds of start-up on small machines. `worker_logs=False`
    keeps Ray's workers' output in Ray's log files (printed once) instead of streaming it
    here; a run's `progress.Console` prints its epochs instead.
    """
    import ray

    configure_environment()
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": worker_env(os.environ)}
    if os.environ.get("RAY_ADDRESS"):
        context = ray.init(runtime_env=runtime_env, log_to_driver=worker_logs)
    else:
        context = ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=worker_logs,
            _node_ip_address="127.0.0.1",
        )
    session = getattr(context, "address_info", {}).get("session_dir")  # none over ray://
    if not worker_logs and session:
        print(f"[emm-ray] Ray's worker logs (head node): {Path(session) / 'logs'}", flush=True)


def current_node() -> str:
    """The id of the Ray node this process runs on (`local` outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the driver hands its workers: Ray's own and `FORWARDED`, less those a
    submitted job's runtime env already sets (Ray refuses a driver's runtime env that
    names a job's variable again)."""
    submitted = json.loads(environ.get(JOB_CONFIG_VARIABLE, "{}"))
    already = set((submitted.get("runtime_env") or {}).get("env_vars") or {})
    wanted = (*RAY_ENV, *FORWARDED)
    return {k: environ[k] for k in wanted if k in environ and k not in already}


def best_device() -> torch.device:
    """CUDA when present, else CPU: every stage runs on both."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
