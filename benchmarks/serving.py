"""Serving cost: the fused deployment against one deployment per pool member, a PLE
deployment and the fused deployment's own no-op endpoint.

    python benchmarks/serving.py        # synthetic census, configs/pools/census_small.yaml

Builds everything it serves, in one run on one machine: prepares synthetic census data,
trains the pool (`train_pool`), fuses it (`fuse_pool`), trains PLE (`train_baselines`),
registers the fused model, every member and PLE in a fresh MLflow registry, deploys them
side by side on one Ray Serve instance and loads them with one load-generator process
(`emm_ray.serve.loadgen`, asyncio + aiohttp):

- `fused`: `POST /predict` of the fused deployment (2 replicas), every task in one answer;
- `per_member`: the same records to each member's deployment (one replica each) at once,
  answered when the slowest has answered (what serving the tasks from the single-task
  models costs a client);
- `ple`: `POST /predict` of a PLE deployment (2 replicas), the end-to-end baseline;
- `noop`: `GET /healthz` of the fused deployment: proxy, routing and replica without a
  model, the ceiling Serve itself sets on this machine.

Closed loop at each client count (`--closed`) and open loop at fixed request rates
(`--rates`), each for `--records` records per request; p50/p95/p99 latency, answered
requests/s, records/s, errors. Every replica runs one torch thread.

A run is valid only if the machine was otherwise idle: per run, the CPU time used by
processes outside this benchmark's own process tree (Ray, Serve and the load generator
are all inside it) is measured from /proc; a run where it exceeds `--max-foreign-cores`
is retried after a pause, and marked `busy` (left out of the target checks) if it stays
so. The 1-minute load average before and after each run is recorded too; it includes the
benchmark's own load. Writes `benchmarks/results/serving.md` and `serving.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from process_tree import machine_busy_seconds, tree_cpu_seconds  # run as a script

from emm_ray.baselines.stage import BaselineSpec, train_baselines
from emm_ray.data.batch import BatchCollator
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.synthetic import SyntheticGenerator
from emm_ray.fusion.stage import FuseSpec, fuse_pool, load_fused_run
from emm_ray.runtime import init_ray
from emm_ray.serve.app import deploy
from emm_ray.serve.loadgen import LoadResult, closed_loop, open_loop
from emm_ray.serve.loading import load_registered
from emm_ray.serve.settings import parse_settings
from emm_ray.tracking.store import tracking_client
from emm_ray.train.loop import TrainConfig
from emm_ray.train.pool import train_pool
from emm_ray.train.pool_spec import load_pool_spec
from emm_ray.tune.registry import register_artifact

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows to prepare")
    parser.add_argument("--pool", type=Path, default=REPO / "configs/pools/census_small.yaml")
    parser.add_argument("--epochs", type=int, default=2, help="pool, fusion and PLE epochs")
    parser.add_argument("--records", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--closed", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument(
        "--rate-fractions",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 0.8],
        help="open-loop request rates, as fractions of the fused deployment's best closed-loop "
        "requests/s for the same request size (the same rates for every setup)",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--max-foreign-cores", type=float, default=0.15)
    parser.add_argument("--port", type=int, default=8431)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS / "serving.md")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emm-serving-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{workdir.resolve() / 'mlruns.db'}"
    started_load = os.getloadavg()[0]
    init_ray()
    started = time.perf_counter()
    prepared = prepare_dataset(DatasetConfig(rows=args.rows, seed=0), workdir / "data")
    models = build_and_register(prepared, args.pool, args.epochs, workdir, tracking_uri)
    print(f"pool, fusion, PLE and registry ready in {time.perf_counter() - started:.0f} s")

    urls = deploy_all(models, tracking_uri, args.port)
    raw = SyntheticGenerator("census", seed=1234).table(64 * max(args.records))
    fused_model, _ = load_fused_run(tracking_client(tracking_uri), models["fused_run"])
    check_fused_answers(urls["fused"][0], fused_model, prepared, raw.slice(0, 16).to_pylist())
    bodies = {
        size: [
            json.dumps({"records": raw.slice(i * size, size).to_pylist()}).encode()
            for i in range(64)
        ]
        for size in args.records
    }
    rows = []
    rates: dict[int, list[float]] = {}
    for size in args.records:
        for setup in ("fused", "per_member", "ple"):
            for concurrency in args.closed:
                rows.append(run(args, setup, "closed", size, concurrency, urls, bodies))
            if setup == "fused":
                peak = max(r["requests_per_s"] for r in rows[-len(args.closed) :])
                rates[size] = [round(peak * fraction, 1) for fraction in args.rate_fractions]
            for rate in rates[size]:
                rows.append(run(args, setup, "open", size, rate, urls, bodies))
    for concurrency in args.closed:
        rows.append(run(args, "noop", "closed", 0, concurrency, urls, bodies))
    for rate in rates[min(args.records)]:
        rows.append(run(args, "noop", "open", 0, rate, urls, bodies))
    from ray import serve

    serve.shutdown()
    compute = model_compute_ms(models, tracking_uri, prepared, raw.slice(0, 16).to_pylist())
    notes = {
        "pool": f"{args.pool.name} ({', '.join(models['members'])})",
        "started_load": round(started_load, 2),
        "compute_ms": compute,
    }
    write(args, rows, notes)


def deploy_all(models: dict[str, Any], tracking_uri: str, port: int) -> dict[str, list[str]]:
    """Every setup on one Serve instance; URLs per setup (per_member: one per member)."""
    share = 2 / (2 + 2 + len(models["members"]))  # scheduling only: one setup runs at a time

    def up(uri: str, name: str, replicas: int) -> str:
        settings = parse_settings(
            {"model_uri": uri, "tracking_uri": tracking_uri, "max_records_per_request": 256}
        )
        return deploy(
            settings,
            name=name,
            route_prefix=f"/{name}",
            port=port,
            num_replicas=replicas,
            num_cpus=share,
            access_log=False,
        )

    fused = up(models["fused"], "fused", 2)
    return {
        "fused": [fused + "/predict"],
        "noop": [fused + "/healthz"],
        "ple": [up(models["ple"], "ple", 2) + "/predict"],
        "per_member": [
            up(uri, f"member-{name}", 1) + "/predict" for name, uri in models["members"].items()
        ],
    }


def run(
    args: argparse.Namespace,
    setup: str,
    mode: str,
    size: int,
    level: float,
    urls: dict[str, list[str]],
    bodies: dict[int, list[bytes]],
) -> dict[str, Any]:
    """One measured run, retried while other processes load the machine."""
    payloads: list[bytes | None] = [None] if setup == "noop" else list(bodies[size])

    def load() -> Coroutine[Any, Any, LoadResult]:
        if mode == "closed":
            return closed_loop(
                urls[setup], payloads, int(level), args.duration, records_per_request=size
            )
        return open_loop(urls[setup], payloads, level, args.duration, records_per_request=size)

    for attempt in range(3):
        load_before = os.getloadavg()[0]
        result, foreign = measured(load)
        busy = foreign > args.max_foreign_cores
        if not busy:
            break
        print(f"  busy machine ({foreign:.2f} foreign cores), attempt {attempt + 1}", flush=True)
        time.sleep(20)
    row = {
        "setup": setup,
        "mode": mode,
        "records_per_request": size,
        "concurrency": int(level) if mode == "closed" else None,
        **{k: v for k, v in result.summary().items() if k not in ("mode", "concurrency")},
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "foreign_cores": round(foreign, 3),
        "busy": busy,
        "error_samples": result.error_samples,
    }
    print(json.dumps({k: v for k, v in row.items() if k != "error_samples"}), flush=True)
    return row


def measured(load: Callable[[], Coroutine[Any, Any, LoadResult]]) -> tuple[LoadResult, float]:
    """Run `load`; also return the cores used meanwhile by processes outside this tree."""
    ours_before, busy_before = tree_cpu_seconds(), machine_busy_seconds()
    began = time.perf_counter()
    result = asyncio.run(load())
    wall = time.perf_counter() - began
    ours = tree_cpu_seconds() - ours_before
    return result, max(0.0, (machine_busy_seconds() - busy_before - ours) / wall)


def build_and_register(
    prepared: PreparedDataset, pool_path: Path, epochs: int, workdir: Path, tracking_uri: str
) -> dict[str, Any]:
    """Train the pool, the fused model and PLE; register all; returns their model URIs."""
    spec = load_pool_spec(pool_path)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": epochs})})
    pool = train_pool(spec, prepared, storage_path=workdir / "ray", tracking_uri=tracking_uri)
    if pool.failed:
        raise SystemExit(f"pool training failed:\n{pool.table()}")
    train = TrainConfig(epochs=epochs, patience=None)
    fused = fuse_pool(
        FuseSpec(
            members=tuple(pool.run_ids()),
            pool_experiment=spec.experiment,
            train=train,
            data_mode="memory",
        ),
        prepared,
        storage_path=workdir / "ray",
        tracking_uri=tracking_uri,
    )
    (ple,) = train_baselines(
        BaselineSpec(names=("ple",), train=train),
        prepared,
        storage_path=workdir / "ray",
        tracking_uri=tracking_uri,
    )
    client = tracking_client(tracking_uri)
    uris = {}
    for name, run_id in [("fused", fused.run_id), ("ple", ple.run_id), *pool.run_ids().items()]:
        version = register_artifact(client, f"bench-{name}", run_id, "model")
        uris[name] = f"models:/bench-{name}/{version.version}"
    return {
        "fused": uris.pop("fused"),
        "ple": uris.pop("ple"),
        "fused_run": fused.run_id,
        "members": uris,
    }


def check_fused_answers(
    url: str, model: torch.nn.Module, prepared: PreparedDataset, records: list[dict]
) -> None:
    """Refuse to time a deployment whose answers differ from the fused model's own."""
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps({"records": records}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    schema = prepared.schema
    encoded = schema.encode(pa.Table.from_pylist(records))
    batch = BatchCollator(schema)({n: encoded.column(n).to_numpy() for n in encoded.column_names})
    with torch.inference_mode():
        expected = torch.sigmoid(model(batch.sparse, batch.dense).double()).numpy()
    served = np.array([[p[t] for t in model.task_names] for p in body["predictions"]])
    gap = float(np.abs(served - expected).max())
    if gap > 1e-6:
        raise SystemExit(f"fused deployment disagrees with the fused model by {gap}")
    print(f"fused deployment matches the fused model (max |diff| {gap:.1e})", flush=True)


def model_compute_ms(
    models: dict[str, Any], tracking_uri: str, prepared: PreparedDataset, records: list[dict]
) -> dict[str, float]:
    """In-process forward time of one request's records (one thread): HTTP is the rest."""
    schema = prepared.schema
    encoded = schema.encode(pa.Table.from_pylist(records))
    batch = BatchCollator(schema)({n: encoded.column(n).to_numpy() for n in encoded.column_names})
    sparse, dense = batch.sparse.numpy(), batch.dense.numpy()
    torch.set_num_threads(1)
    timings = {}
    for name, uri in [
        ("fused", models["fused"]),
        ("ple", models["ple"]),
        *models["members"].items(),
    ]:
        servable, _ = load_registered(uri, tracking_uri)
        for _ in range(20):
            servable.predict_proba(sparse, dense)
        began = time.perf_counter()
        for _ in range(200):
            servable.predict_proba(sparse, dense)
        timings[name] = round((time.perf_counter() - began) / 200 * 1000, 3)
    return timings


JSON_FIELDS = (
    "setup", "mode", "records_per_request", "concurrency", "rate", "requests", "requests_per_s",
    "p50_ms", "p95_ms", "p99_ms", "records_per_s", "errors", "load_before", "load_after",
    "foreign_cores", "busy", "error_samples",
)  # fmt: skip


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's Serve targets, each checked against the valid (not busy) closed-loop rows."""

    def find(setup: str, size: int, concurrency: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rows
                if (r["setup"], r["mode"], r["records_per_request"], r["concurrency"])
                == (setup, "closed", size, concurrency)
                and not r["busy"]
            ),
            None,
        )

    lines = []
    fused16, noop = find("fused", 16, 32), find("noop", 0, 32)
    if fused16 and noop:
        ratio = fused16["requests_per_s"] / noop["requests_per_s"]
        p99 = fused16["p99_ms"] / noop["p99_ms"]
        lines.append(
            f"`/predict` (16 records) at 32 clients: {ratio:.2f}x the no-op's requests/s "
            f"(target >= 0.6x), p99 {p99:.2f}x the no-op's (target <= 2x)"
        )
    fused256 = find("fused", 256, 8)
    if fused256:
        lines.append(
            f"256-record requests at 8 clients: {fused256['records_per_s']:,.0f} "
            "records/s (target >= 20,000)"
        )
    fused = [r for r in rows if r["setup"] == "fused"]
    closed_errors = sum(r["errors"] for r in fused if r["mode"] == "closed")
    open_errors = sum(r["errors"] for r in fused if r["mode"] == "open")
    lines.append(
        f"errors of the fused deployment: {closed_errors} in closed loop, {open_errors} in "
        "open loop (target 0)"
    )
    ratios = []
    for r in rows:
        if r["setup"] == "fused" and r["mode"] == "closed" and not r["busy"]:
            split = find("per_member", r["records_per_request"], r["concurrency"])
            if split and split["records_per_s"]:
                ratios.append(
                    f"{r['records_per_request']} x {r['concurrency']}: "
                    f"{r['records_per_s'] / split['records_per_s']:.2f}x"
                )
    lines.append(
        "fused / per-member records/s (records x clients): "
        + ", ".join(ratios)
        + " (target >= 1.37x at every concurrency)"
    )
    return lines


def write(args: argparse.Namespace, rows: list[dict[str, Any]], notes: dict[str, Any]) -> None:
    """`serving.md` (table, targets, model compute) and its JSON twin `serving.json`."""
    busy = [r for r in rows if r["busy"]]
    lines = [
        "# Serving: fused deployment vs per-member deployments, PLE and Serve's no-op ceiling",
        "",
        f"`python benchmarks/serving.py` on {platform.machine()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}; pool "
        f"{notes['pool']}, {args.epochs} epochs, synthetic census. One load-generator "
        f"process; {args.duration:.0f} s per run after 1 s of warm-up (closed loop); fused "
        "and PLE 2 replicas, each member 1 replica, 1 torch thread per replica. Load "
        f"average (1 min) when the benchmark started: {notes['started_load']}; per run in "
        "the table (it includes the benchmark's own load). `foreign` is the CPU used "
        "meanwhile by processes outside the benchmark (cores); runs above "
        f"{args.max_foreign_cores} after 3 tries are marked busy: {len(busy)} of {len(rows)}.",
        "",
        "`per_member` sends each request to the four member deployments at once and counts "
        "it answered when all four have answered; `noop` is `GET /healthz` of the fused "
        "deployment. Open-loop rates are fractions "
        f"({', '.join(f'{f:g}' for f in args.rate_fractions)}) of the fused deployment's best "
        "closed-loop requests/s at that request size, the same rates for every setup; "
        "latency counts from each request's scheduled start, and a request unanswered "
        "after 30 s is an error.",
        "",
        "| setup | mode | records | clients / rate | req/s | p50 ms | p95 ms | p99 ms "
        "| records/s | errors | load before / after | foreign |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        level = r["concurrency"] if r["mode"] == "closed" else f"{r['rate']:g}/s"
        flag = " (busy)" if r["busy"] else ""
        lines.append(
            f"| {r['setup']}{flag} | {r['mode']} | {r['records_per_request']} | {level} | "
            f"{r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['records_per_s']:,.0f} | {r['errors']} | "
            f"{r['load_before']} / {r['load_after']} | {r['foreign_cores']:.2f} |"
        )
    lines += ["", "## Against the targets", ""] + [f"- {line}" for line in targets(rows)]
    compute = notes["compute_ms"]
    members = sum(v for k, v in compute.items() if k not in ("fused", "ple"))
    lines += [
        "",
        "Model compute alone (in-process forward of one 16-record request, one thread): "
        f"fused {compute['fused']:.2f} ms, PLE {compute['ple']:.2f} ms, members "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in compute.items() if k not in ("fused", "ple"))
        + f" (sum {members:.2f} ms).",
    ]
    args.output.write_text("\n".join(lines) + "\n")
    twin = args.output.with_suffix(".json")
    twin.write_text(json.dumps([{k: r[k] for k in JSON_FIELDS} for r in rows], indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
