"""Load generator for a deployment: closed-loop clients or an open-loop request rate.

    python -m emm_ray.serve.loadgen http://127.0.0.1:8321/predict --body request.json \\
        --closed 1 8 32 --duration 10
    python -m emm_ray.serve.loadgen http://127.0.0.1:8321/healthz --open 50 100

One asyncio process, one HTTP connection pool (aiohttp). Two ways to load a server:

- closed loop: `concurrency` clients, each sending its next request when its previous
  answer arrives, until `duration_s` has passed; latency is send to answer.
- open loop: requests start on a fixed schedule (`rate` per second, exponential gaps from
  a seeded generator, as independent users arrive), whether or not earlier ones have
  been answered; latency is measured from the *scheduled* start, so a server that falls
  behind is charged for the queue it builds (no coordinated omission).

Every answer other than HTTP 200, and every timeout or connection error, is an error:
counted, its first messages kept, never raised, so a run under overload still reports.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
import numpy as np

MAX_ERROR_SAMPLES = 5


@dataclass
class LoadResult:
    """What one load run measured; `summary()` gives its table row."""

    mode: Literal["closed", "open"]
    concurrency: int | None
    rate: float | None
    records_per_request: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    in_flight: int = 0  # requests sent and not yet answered, while the run goes

    def record_error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(message)

    def summary(self) -> dict[str, float | int | str | None]:
        """Answered requests per second, latency percentiles of the answered ones, errors."""
        answered = len(self.latencies_ms)
        per_second = answered / self.wall_s if self.wall_s else 0.0

        def percentile(q: float) -> float | None:  # None (JSON null) when nothing answered
            return round(float(np.percentile(self.latencies_ms, q)), 2) if answered else None

        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "records_per_request": self.records_per_request,
            "requests": answered + self.errors,
            "requests_per_s": round(per_second, 1),
            "p50_ms": percentile(50),
            "p95_ms": percentile(95),
            "p99_ms": percentile(99),
            "records_per_s": round(per_second * self.records_per_request, 1),
            "errors": self.errors,
        }


async def _send(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    body: bytes | None,
    result: LoadResult,
    began: float,
) -> None:
    """One request: the same body to every URL at once, answered when all have answered
    (how a client that needs one model per task sees a split deployment). Its latency
    from `began` on success, one error otherwise."""
    result.in_flight += 1
    try:
        outcomes = await asyncio.gather(*(_fetch(session, url, body) for url in urls))
    finally:
        result.in_flight -= 1
    failures = [outcome for outcome in outcomes if outcome]
    if failures:
        result.record_error(failures[0])
    else:
        result.latencies_ms.append((time.perf_counter() - began) * 1000)


async def _fetch(session: aiohttp.ClientSession, url: str, body: bytes | None) -> str | None:
    """`None` for an HTTP 200, else what went wrong (a GET when `body` is `None`)."""
    try:
        if body is None:
            response = await session.get(url)
        else:
            response = await session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            )
        async with response:
            payload = await response.read()
            if response.status != 200:
                return f"HTTP {response.status}: {payload[:200].decode(errors='replace')}"
    except (aiohttp.ClientError, OSError) as exc:  # OSError covers TimeoutError
        return f"{type(exc).__name__}: {exc}"
    return None


def _session(connections: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def closed_loop(
    url: str | Sequence[str],
    bodies: Sequence[bytes | None],
    concurrency: int,
    duration_s: float,
    *,
    records_per_request: int = 0,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
    result: LoadResult | None = None,
) -> LoadResult:
    """`concurrency` clients back to back for `duration_s` (after `warmup_s` unmeasured).

    `bodies` are sent in turn (`None`: a GET); requests started before the deadline are
    waited for and counted. Several URLs: each request goes to all of them (`_send`).
    Pass `result` to watch the run while it goes (its `in_flight`, its errors so far).
    """
    urls = [url] if isinstance(url, str) else list(url)
    result = result or LoadResult("closed", concurrency, None, records_per_request)
    async with _session(concurrency * len(urls), timeout_s) as session:
        warmup = LoadResult("closed", concurrency, None, records_per_request)
        await _clients(session, urls, bodies, concurrency, warmup_s, warmup)
        await _clients(session, urls, bodies, concurrency, duration_s, result)
    return result


async def _clients(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    bodies: Sequence[bytes | None],
    concurrency: int,
    seconds: float,
    result: LoadResult,
) -> None:
    """`concurrency` back-to-back clients until `seconds` have passed; sets `wall_s`."""
    began = time.perf_counter()
    deadline = began + seconds
    turn = itertools.count()

    async def client() -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            await _send(session, urls, bodies[next(turn) % len(bodies)], result, sent)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - began


async def open_loop(
    url: str | Sequence[str],
    bodies: Sequence[bytes | None],
    rate: float,
    duration_s: float,
    *,
    records_per_request: int = 0,
    max_connections: int = 256,
    timeout_s: float = 30.0,
    seed: int = 0,
) -> LoadResult:
    """Requests arriving at `rate` per second for `duration_s`, answered or not.

    Arrival gaps are exponential (seeded). Latency counts from the scheduled start, so
    time spent waiting for a free connection (at most `max_connections`) is included.
    """
    urls = [url] if isinstance(url, str) else list(url)
    result = LoadResult("open", None, rate, records_per_request)
    arrivals = random.Random(seed)
    async with _session(max_connections, timeout_s) as session:
        start = time.perf_counter()
        scheduled, index, pending = start, 0, []
        while scheduled < start + duration_s:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = bodies[index % len(bodies)]
            sent = _send(session, urls, body, result, scheduled)
            pending.append(asyncio.ensure_future(sent))
            index += 1
            scheduled += arrivals.expovariate(rate)
        await asyncio.gather(*pending)
        result.wall_s = time.perf_counter() - start
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "url",
        nargs="+",
        help="endpoint to load, e.g. http://127.0.0.1:8321/predict; several: each request "
        "goes to all of them and is answered when all have answered",
    )
    parser.add_argument(
        "--body", type=Path, help="JSON request body to POST (omit for GET requests)"
    )
    parser.add_argument("--closed", type=int, nargs="*", default=[], help="client counts")
    parser.add_argument("--open", type=float, nargs="*", default=[], help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    args = parser.parse_args(argv)
    if not args.closed and not args.open:
        parser.error("give --closed client counts and/or --open request rates")
    body = args.body.read_bytes() if args.body else None
    try:
        records = len(json.loads(body).get("records", [])) if body else 0
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        parser.error(f"--body {args.body}: not a JSON object ({exc})")
    runs = [("closed", c) for c in args.closed] + [("open", r) for r in args.open]
    for mode, level in runs:
        if mode == "closed":
            load = closed_loop(args.url, [body], int(level), args.duration)
        else:
            load = open_loop(args.url, [body], level, args.duration)
        result = asyncio.run(load)
        result.records_per_request = records
        print(json.dumps(result.summary() | {"error_samples": result.error_samples}))


if __name__ == "__main__":
    main()
