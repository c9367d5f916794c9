"""Process environment and Ray start-up shared by every stage.

Ray reads these variables at import/start time, so they are set when `emm_ray` is
imported (before any `import ray` in our code) and passed to workers via the runtime env.
"""

from __future__ import annotations

import json
import os
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

FORWARDED_PREFIXES = ("MLFLOW_", "AWS_", "EMM_")
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
    # A submitted job's own runtime env already reaches every worker; Ray refuses a
    # driver's that names the same variables again.
    submitted = json.loads(os.environ.get(JOB_CONFIG_VARIABLE, "{}"))
    already = set((submitted.get("runtime_env") or {}).get("env_vars") or {})
    runtime_env = {
        "env_vars": {k: v for k, v in os.environ.items() if _forwarded(k) and k not in already}
    }
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
    if not worker_logs:
        logs = Path(context.address_info["session_dir"]) / "logs"
        print(f"[emm-ray] Ray's worker logs: {logs}", flush=True)


def _forwarded(key: str) -> bool:
    """Variables every worker needs as the driver has them: Ray's own, and where the
    tracking server, the object store and the node cache are (`MLFLOW_*`, `AWS_*`,
    `EMM_*`)."""
    return key in RAY_ENV or key.startswith(FORWARDED_PREFIXES)


def best_device() -> torch.device:
    """CUDA when present, else CPU: every stage runs on both."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
