"""A Ray worker node joining a head on this machine, kept on 127.0.0.1; runs until SIGTERM.

    python -m tests.cluster.worker_node --address 127.0.0.1:<gcs port> --num-cpus 1

`ray start --address` cannot do this here: with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
(what keeps Ray on loopback, `emm_ray.runtime`) it refuses to start a worker node, and
with it set to 1 Ray rewrites every 127.0.0.1 address to the machine's external one.
So the node is started the way Ray's own `ray.cluster_utils.Cluster.add_node` starts its
simulated nodes (`ray._private.node.Node`), against a head started by `ray start --head`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

import emm_ray  # noqa: F401  (Ray's environment before ray is imported)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the head's GCS address, host:port")
    parser.add_argument(
        "--temp-dir",
        required=True,
        help="its own, as another machine's disk: nodes sharing the head's session "
        "directory delete each other's runtime env files (the job's working dir)",
    )
    parser.add_argument("--num-cpus", type=float, default=1)
    parser.add_argument("--object-store-memory", type=int, default=300_000_000)
    parser.add_argument("--dashboard-agent-listen-port", type=int, required=True)
    parser.add_argument("--dashboard-agent-grpc-port", type=int, required=True)
    parser.add_argument("--runtime-env-agent-port", type=int, required=True)
    parser.add_argument("--metrics-export-port", type=int, required=True)
    args = parser.parse_args()

    from ray._private.node import Node
    from ray._private.parameter import RayParams

    params = RayParams(
        gcs_address=args.address,
        node_ip_address="127.0.0.1",
        num_cpus=args.num_cpus,
        num_gpus=0,
        object_store_memory=args.object_store_memory,
        node_manager_port=0,
        min_worker_port=0,
        max_worker_port=0,
        temp_dir=args.temp_dir,
        dashboard_agent_listen_port=args.dashboard_agent_listen_port,
        metrics_agent_port=args.dashboard_agent_grpc_port,
        runtime_env_agent_port=args.runtime_env_agent_port,
        metrics_export_port=args.metrics_export_port,
    )
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(f"worker node {node.unique_id} joined {args.address}", flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        node.kill_all_processes(check_alive=False, allow_graceful=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.pause()


if __name__ == "__main__":
    main()
