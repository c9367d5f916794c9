"""Where a served request's CPU goes: per process (replicas, proxy, load generator).

    python benchmarks/serving.py --workdir DIR
    python benchmarks/serving_profile.py --registry DIR/mlruns.db

Deploys a registered fused model (by default the one `benchmarks/serving.py` registered
in its work directory) with 2 replicas, loads it closed-loop with `emm_ray.serve.loadgen`
(16-record requests and the no-op `/healthz` at 32 clients, 256-record requests at 8),
and reads every process's CPU time from /proc before and after each run. Per run: the
cores each kind of process used and its CPU milliseconds per answered request, which says
whether the model, the replica's request handling or Serve's proxy bounds throughput.
Writes `benchmarks/results/serving_profile.md` and `.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from process_tree import cpu_seconds_by_pid, title  # run as a script

from emm_ray.data.synthetic import SyntheticGenerator
from emm_ray.runtime import init_ray
from emm_ray.serve.app import deploy
from emm_ray.serve.loadgen import closed_loop
from emm_ray.serve.settings import parse_settings

REPO = Path(__file__).resolve().parents[1]
RUNS = ((16, "/predict", 32), (0, "/healthz", 32), (256, "/predict", 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--registry",
        type=Path,
        required=True,
        help="the mlruns.db of a `benchmarks/serving.py --workdir DIR` run",
    )
    parser.add_argument("--model-uri", default="models:/bench-fused/1")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8431)
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks/results/serving_profile.md"
    )
    args = parser.parse_args()
    if not args.registry.exists():
        raise SystemExit(f"{args.registry}: no registry; run benchmarks/serving.py first")
    init_ray()
    settings = parse_settings(
        {
            "model_uri": args.model_uri,
            "tracking_uri": f"sqlite:///{args.registry.resolve()}",
            "max_records_per_request": 256,
        }
    )
    url = deploy(
        settings,
        name="profiled",
        route_prefix="/profiled",
        port=args.port,
        num_replicas=2,
        num_cpus=0.5,
        access_log=False,
    )
    rows = []
    for size, endpoint, clients in RUNS:
        raw = SyntheticGenerator("census", seed=1234).table(64 * max(size, 1))
        bodies: list[bytes | None] = (
            [
                json.dumps({"records": raw.slice(i * size, size).to_pylist()}).encode()
                for i in range(64)
            ]
            if size
            else [None]
        )
        asyncio.run(closed_loop(url + endpoint, bodies, clients, 2.0))  # warm
        load_before = os.getloadavg()[0]
        before, began = cpu_by_process(), time.perf_counter()
        result = asyncio.run(
            closed_loop(url + endpoint, bodies, clients, args.duration, records_per_request=size)
        )
        wall, after = time.perf_counter() - began, cpu_by_process()
        summary = result.summary()
        used: dict[str, float] = {}
        for pid, (kind, seconds) in after.items():
            if pid in before:
                used[kind] = used.get(kind, 0.0) + seconds - before[pid][1]
        answered = max(1, len(result.latencies_ms))
        rows.append(
            {
                "endpoint": endpoint,
                "records_per_request": size,
                "concurrency": clients,
                "requests_per_s": summary["requests_per_s"],
                "errors": summary["errors"],
                "cores": {k: round(v / wall, 3) for k, v in sorted(used.items())},
                "cpu_ms_per_request": {
                    k: round(v / answered * 1000, 2) for k, v in sorted(used.items())
                },
                "load_before": round(load_before, 2),
                "load_after": round(os.getloadavg()[0], 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    write(args, rows)


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Per live process: the kind this benchmark reports it as, and its CPU seconds."""
    return {pid: (kind(pid, title(pid)), cpu) for pid, cpu in cpu_seconds_by_pid().items()}


def kind(pid: int, name: str) -> str:
    if pid == os.getpid():
        return "load generator"
    if name.startswith("ray::ServeReplica:"):
        return "replicas"
    if name.startswith("ray::ProxyActor"):
        return "proxy"
    return "everything else"


def write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    kinds = ["replicas", "proxy", "load generator", "everything else"]
    lines = [
        "# Where a served request's CPU goes",
        "",
        f"`python benchmarks/serving_profile.py` on {platform.machine()} ({os.cpu_count()} "
        f"cores), {time.strftime('%Y-%m-%d %H:%M')}: `{args.model_uri}` from "
        f"`{args.registry}`, 2 replicas of 1 torch thread, closed loop for "
        f"{args.duration:.0f} s per row. CPU per answered request from /proc, by process "
        "kind ('everything else': Ray's GCS, raylet and Serve controller, and any other "
        "job on the machine).",
        "",
        "| endpoint | records | clients | req/s | errors | "
        + " | ".join(f"{k} ms/req (cores)" for k in kinds)
        + " | load before / after |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(kinds) + "---|",
    ]
    for row in rows:
        cells = [
            f"{row['cpu_ms_per_request'].get(k, 0):.2f} ({row['cores'].get(k, 0):.2f})"
            for k in kinds
        ]
        lines.append(
            f"| {row['endpoint']} | {row['records_per_request']} | {row['concurrency']} | "
            f"{row['requests_per_s']} | {row['errors']} | {' | '.join(cells)} | "
            f"{row['load_before']} / {row['load_after']} |"
        )
    args.output.write_text("\n".join(lines) + "\n")
    args.output.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
