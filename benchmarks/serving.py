"""Serving cost: one fused deployment answering every task vs one deployment per pool member.

    python benchmarks/serving.py        # synthetic census, configs/pools/census_small.yaml

Builds everything it serves, in one run on one machine: prepares synthetic census data,
trains the pool (`train_pool`), fuses it (`fuse_pool`), registers the fused model and
every member in a fresh MLflow registry, then measures two ways of answering "all tasks
for these records" over HTTP on the same Ray Serve instance:

- fused: one request to the fused deployment, which answers every task;
- per-member: one request to each single-task member's deployment (concurrently), the
  answer complete when the slowest returns.

Both setups run side by side on the same cluster (fused: 2 replicas; per-member: one
replica per member; every replica one torch thread) and are measured in interleaved
rounds with the same records, at each client concurrency: latency per complete answer
(p50/p99) and throughput (records answered for all tasks per second). The table goes to
`benchmarks/results/serving.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pyarrow as pa
import torch

from emm_ray.data.batch import BatchCollator
from emm_ray.data.prepare import DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.data.synthetic import SyntheticGenerator
from emm_ray.fusion.stage import FuseSpec, fuse_pool, load_fused_run
from emm_ray.runtime import init_ray
from emm_ray.serve.app import deploy
from emm_ray.serve.loading import load_registered
from emm_ray.serve.settings import parse_settings
from emm_ray.tracking.store import tracking_client
from emm_ray.train.loop import TrainConfig
from emm_ray.train.pool import train_pool
from emm_ray.train.pool_spec import load_pool_spec
from emm_ray.tune.registry import register_artifact

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Measurement:
    setup: str
    requests_per_answer: int
    concurrency: int
    answers: int
    records: int
    latencies_ms: list[float]
    wall_s: float

    def merged(self, other: Measurement) -> Measurement:
        """This and another round of the same setup as one measurement."""
        return Measurement(
            self.setup,
            self.requests_per_answer,
            self.concurrency,
            self.answers + other.answers,
            self.records,
            self.latencies_ms + other.latencies_ms,
            self.wall_s + other.wall_s,
        )

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.latencies_ms, 99))

    @property
    def records_per_s(self) -> float:
        return self.answers * self.records / self.wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows to prepare")
    parser.add_argument("--pool", type=Path, default=REPO / "configs/pools/census_small.yaml")
    parser.add_argument("--epochs", type=int, default=2, help="pool and fusion epochs")
    parser.add_argument("--records", type=int, default=16, help="records per request")
    parser.add_argument("--answers", type=int, default=300, help="answers per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per setup")
    parser.add_argument("--port", type=int, default=8431)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/serving.md")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emm-serving-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{workdir.resolve() / 'mlruns.db'}"
    load_before = os.getloadavg()
    init_ray()

    started = time.perf_counter()
    prepared = prepare_dataset(DatasetConfig(rows=args.rows, seed=0), workdir / "data")
    models = build_and_register(prepared, args.pool, args.epochs, workdir, tracking_uri)
    print(f"pool + fusion + registry ready in {time.perf_counter() - started:.0f} s", flush=True)

    raw = SyntheticGenerator("census", seed=1234).table(args.answers * args.records)
    records = [raw.slice(i * args.records, args.records).to_pylist() for i in range(args.answers)]
    fused_model, _ = load_fused_run(tracking_client(tracking_uri), models["fused_run"])

    members = models["members"]
    share = 1.0 / (2 + len(members))  # both setups on the cluster at once, equal shares
    fused_url = deploy(
        parse_settings({"model_uri": models["fused"], "tracking_uri": tracking_uri}),
        name="bench-fused",
        route_prefix="/fused",
        port=args.port,
        num_replicas=2,
        num_cpus=share,
        access_log=False,
    )
    member_urls = [
        deploy(
            parse_settings({"model_uri": uri, "tracking_uri": tracking_uri}),
            name=f"bench-{name}",
            route_prefix=f"/{name}",
            port=args.port,
            num_cpus=share,
            access_log=False,
        )
        for name, uri in members.items()
    ]
    check_fused_answers(fused_url, fused_model, prepared, records[0])
    setups = {"fused": [fused_url], "per-member": member_urls}
    results: dict[tuple[str, int], Measurement] = {}
    for _ in range(args.rounds):  # interleaved rounds: load drift hits both setups alike
        for concurrency in args.concurrency:
            for setup, urls in setups.items():
                measured = asyncio.run(measure(setup, urls, records, concurrency))
                if (setup, concurrency) in results:
                    measured = results[setup, concurrency].merged(measured)
                results[setup, concurrency] = measured
    delete_apps(["bench-fused", *(f"bench-{name}" for name in members)])

    compute = model_compute_ms(models, tracking_uri, prepared, records[0])
    report = render(list(results.values()), compute, args, members, load_before, os.getloadavg())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)


def build_and_register(
    prepared: PreparedDataset, pool_path: Path, epochs: int, workdir: Path, tracking_uri: str
) -> dict[str, Any]:
    """Train the pool and the fused model, register both kinds; returns their model URIs."""
    spec = load_pool_spec(pool_path)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": epochs})})
    pool = train_pool(spec, prepared, storage_path=workdir / "ray", tracking_uri=tracking_uri)
    if pool.failed:
        raise SystemExit(f"pool training failed:\n{pool.table()}")
    fused = fuse_pool(
        FuseSpec(
            members=tuple(pool.run_ids()),
            pool_experiment=spec.experiment,
            train=TrainConfig(epochs=epochs, patience=None),
            data_mode="memory",
        ),
        prepared,
        storage_path=workdir / "ray",
        tracking_uri=tracking_uri,
    )
    client = tracking_client(tracking_uri)
    fused_version = register_artifact(
        client, "bench-fused", fused.run_id, "model", metrics=fused.manifest.metrics
    )
    members = {}
    for name, run_id in pool.run_ids().items():
        version = register_artifact(client, f"bench-{name}", run_id, "model")
        members[name] = f"models:/bench-{name}/{version.version}"
    return {
        "fused": f"models:/bench-fused/{fused_version.version}",
        "fused_run": fused.run_id,
        "members": members,
    }


def check_fused_answers(
    url: str, model: torch.nn.Module, prepared: PreparedDataset, records: list[dict]
) -> None:
    """Refuse to time a deployment whose answers differ from the fused model's own."""
    import urllib.request

    request = urllib.request.Request(
        url + "/predict",
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
    """In-process forward time per request (one thread): what HTTP adds is the rest."""
    schema = prepared.schema
    encoded = schema.encode(pa.Table.from_pylist(records))
    batch = BatchCollator(schema)({n: encoded.column(n).to_numpy() for n in encoded.column_names})
    sparse, dense = batch.sparse.numpy(), batch.dense.numpy()
    torch.set_num_threads(1)
    timings = {}
    for name, uri in [("fused", models["fused"]), *models["members"].items()]:
        servable, _ = load_registered(uri, tracking_uri)
        for _ in range(20):
            servable.predict_proba(sparse, dense)
        began = time.perf_counter()
        for _ in range(200):
            servable.predict_proba(sparse, dense)
        timings[name] = (time.perf_counter() - began) / 200 * 1000
    return timings


async def measure(
    setup: str, urls: list[str], records: list[list[dict]], concurrency: int
) -> Measurement:
    """`concurrency` clients ask for all tasks of each record batch; one answer = all URLs."""
    bodies = [json.dumps({"records": r}).encode() for r in records]
    latencies: list[float] = []
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency * len(urls))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(url: str, body: bytes) -> None:
            async with session.post(url + "/predict", data=body, headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
                await response.read()

        async def answer(body: bytes) -> None:
            began = time.perf_counter()
            await asyncio.gather(*(post(url, body) for url in urls))
            latencies.append((time.perf_counter() - began) * 1000)

        for body in bodies[: min(20, len(bodies))]:  # warm-up: connections, replicas, JIT paths
            await answer(body)
        latencies.clear()
        queue = iter(bodies)

        async def client() -> None:
            for body in queue:
                await answer(body)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    measurement = Measurement(
        setup, len(urls), concurrency, len(bodies), len(records[0]), latencies, wall
    )
    print(
        f"{setup:>10} c={concurrency}: p50 {measurement.p50:.1f} ms, p99 {measurement.p99:.1f} "
        f"ms, {measurement.records_per_s:.0f} records/s",
        flush=True,
    )
    return measurement


def delete_apps(names: list[str]) -> None:
    from ray import serve

    for name in names:
        serve.delete(name)


def render(
    results: list[Measurement],
    compute: dict[str, float],
    args: argparse.Namespace,
    members: dict[str, str],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    lines = [
        "# Serving: fused deployment vs one deployment per pool member",
        "",
        f"`python benchmarks/serving.py` — {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, CPU-only torch "
        f"{torch.__version__}; pool `{args.pool.name}` ({len(members)} members: "
        f"{', '.join(members)}), {args.epochs} epochs, {args.records} records per request, "
        f"{args.answers} answers x {args.rounds} interleaved rounds per row. "
        f"Load average before/after: "
        f"{load_before[0]:.1f} / {load_after[0]:.1f} (the machine is shared).",
        "",
        "An *answer* is every task's probability for one request's records: one HTTP request "
        f"to the fused deployment, or {len(members)} concurrent requests (one per member "
        "deployment). Latency is per answer; throughput counts records answered for all tasks.",
        "",
        "| setup | requests per answer | clients | p50 ms | p99 ms | records/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in results:
        lines.append(
            f"| {m.setup} | {m.requests_per_answer} | {m.concurrency} | {m.p50:.1f} | "
            f"{m.p99:.1f} | {m.records_per_s:.0f} |"
        )
    lines += ["", "| clients | throughput fused / per-member | p50 per-member / fused |"]
    lines += ["| ---: | ---: | ---: |"]
    for concurrency in args.concurrency:
        fused = next(m for m in results if m.setup == "fused" and m.concurrency == concurrency)
        split = next(m for m in results if m.setup != "fused" and m.concurrency == concurrency)
        lines.append(
            f"| {concurrency} | {fused.records_per_s / split.records_per_s:.2f}x | "
            f"{split.p50 / fused.p50:.2f}x |"
        )
    member_sum = sum(v for k, v in compute.items() if k != "fused")
    lines += [
        "",
        f"Model compute alone (in-process forward of one {args.records}-record request, one "
        f"thread): fused {compute['fused']:.2f} ms; members "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in compute.items() if k != "fused")
        + f" (sum {member_sum:.2f} ms). The rest of each latency is HTTP, Serve routing, "
        "validation and encoding, paid once per request.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
