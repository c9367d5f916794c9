"""How much a fused forward costs against the summed forwards of the members it fuses.

In-process, one torch thread, inference mode, on real census rows (the validation split
of the census pool's data): for 16, 256 and 4,096 rows, the median over interleaved
repetitions of one forward of

- `members`: each of the census pool's four members (`fusion_benchmark.py`) on the rows,
  summed (what serving every task from the single-task models computes);
- `emm`: the shipped fused model (`configs/fusion/emm.yaml`: `component_input:
  residual`) with every task keeping its correction;
- `emm-frozen-pool`: the same with `component_input: none`;
- `emm, ensemble kept`: the shipped model after `finish_training` kept the bare
  ensemble on every task (what census's fused models do), which skips the correction;
- with `--compile`, `emm (torch.compile)`: the first row compiled (`dynamic=True`),
  with its compile time.

With `--profile`, also where the time goes: `torch.profiler` over the same forwards of
`members` and `emm` at 16 and 4,096 rows, the operator calls per forward and the
operators taking the most self CPU time, into `fused_forward_profile.md` (and `.json`).

Speed does not depend on the weights' values, so the members are freshly initialised;
what it depends on (architectures, widths, levels, which corrections are kept) is as in
the census benchmark. Writes `benchmarks/results/fused_forward.md` and `.json` (rows
`{"model", "rows", "ms", "ratio_to_members", "load_before", "load_after"}`).

    python benchmarks/fused_forward.py [--compile] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fusion_benchmark import MEMBER_HPARAMS, POOLS  # the same pool, run as a script
from torch.profiler import ProfilerActivity

from emm_ray.config import load_yaml_config
from emm_ray.data.prepare import DatasetConfig, prepare_dataset
from emm_ray.data.streaming import load_split
from emm_ray.fusion import EMMModel, FusionConfig, PoolMember
from emm_ray.models import build_model
from emm_ray.train.loop import seed_everything

REPO = Path(__file__).resolve().parents[1]
ROW_COUNTS = (16, 256, 4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the emm row")
    parser.add_argument("--profile", action="store_true", help="also profile members and emm")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/fused_forward.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prepared = prepare_dataset(
        DatasetConfig(name="census", source="real"),
        Path(tempfile.gettempdir()) / "emm-bench" / "census-real",
    )
    schema = prepared.schema
    rows = load_split(prepared.path, "validation")
    pool = []
    for index, (architecture, position) in enumerate(POOLS["census"]):
        seed_everything(index)
        task = schema.task_names[position]
        model = build_model(architecture, schema, task, **MEMBER_HPARAMS[architecture])
        pool.append(PoolMember(f"{architecture}_{task}", model.eval()))
    emm = load_yaml_config(REPO / "configs/fusion/emm.yaml", FusionConfig)
    fused = EMMModel(schema, pool, emm).eval()
    frozen_pool = EMMModel(schema, pool, emm.model_copy(update={"component_input": "none"}))
    kept_ensemble = EMMModel(schema, pool, emm).eval()
    for ensemble in kept_ensemble.ensemble.tasks:
        ensemble.correction_enabled.fill_(False)
    setups: dict[str, Callable[[torch.Tensor, torch.Tensor], object]] = {
        "members": lambda s, d: [m.model(s, d) for m in pool],
        "emm": fused,
        "emm-frozen-pool": frozen_pool.eval(),
        "emm, ensemble kept": kept_ensemble,
    }
    notes = []
    if args.compile:
        started = time.perf_counter()
        compiled = torch.compile(fused, dynamic=True)
        with torch.inference_mode():
            for count in ROW_COUNTS:
                batch = rows.slice(slice(0, count))
                compiled(batch.sparse, batch.dense)
        notes.append(f"torch.compile warm-up (3 shapes): {time.perf_counter() - started:.0f} s")
        setups["emm (torch.compile)"] = compiled
    load_before = os.getloadavg()[0]
    timings: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for count in ROW_COUNTS:
                batch = rows.slice(slice(0, count))
                calls = max(1, 4096 // (count * 4))
                for name, forward in setups.items():
                    forward(batch.sparse, batch.dense)  # warm
                    started = time.perf_counter()
                    for _ in range(calls):
                        forward(batch.sparse, batch.dense)
                    elapsed = (time.perf_counter() - started) / calls * 1000
                    timings.setdefault((name, count), []).append(elapsed)
        served = fused(rows.sparse[:256], rows.dense[:256])
        difference = served - fused.parts(rows.sparse[:256], rows.dense[:256], False).logits
    load_after = os.getloadavg()[0]
    records = []
    for count in ROW_COUNTS:
        base = statistics.median(timings[("members", count)])
        for name in setups:
            ms = statistics.median(timings[(name, count)])
            records.append(
                {
                    "model": name,
                    "rows": count,
                    "ms": round(ms, 3),
                    "ratio_to_members": round(ms / base, 2),
                    "load_before": round(load_before, 2),
                    "load_after": round(load_after, 2),
                }
            )
    write(args, records, notes, float(difference.abs().max()), len(rows))
    if args.profile:
        write_profile(
            args.output.with_name("fused_forward_profile.md"),
            {name: setups[name] for name in ("members", "emm")},
            rows,
        )


def write(
    args: argparse.Namespace, records: list[dict], notes: list[str], served_diff: float, n: int
) -> None:
    lines = [
        "# Fused forward vs its members' forwards (census pool)",
        "",
        f"One run on {platform.machine()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}, 1 torch thread, inference mode; rows from the real "
        f"census validation split ({n:,} rows); median of {args.repeats} interleaved "
        "rounds. Pool: dcn_v2 + deepfm (income), dcn_v2 + wide_deep (never_married), as "
        "`fusion_benchmark.py`'s census pool; `members` is their four forwards summed. "
        f"Load average (1 min) before / after: {records[0]['load_before']} / "
        f"{records[0]['load_after']}.",
        "",
        "| model | rows | ms per forward | ratio to members |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['rows']} | {r['ms']:.2f} | {r['ratio_to_members']:.2f} |"
        for r in records
    ]
    lines += ["", *[f"- {note}" for note in notes]]
    lines.append(
        f"- the fused model's `forward` and its full `parts` pass agree to {served_diff:.1e} "
        "(max abs logit difference)"
    )
    args.output.write_text("\n".join(lines) + "\n")
    args.output.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    print(args.output.read_text())


def write_profile(output: Path, setups: dict[str, Callable], rows: Any, top: int = 8) -> None:
    """Operator calls per forward and the top operators by self CPU time, per setup and
    row count: what the fused forward does that its members' forwards do not."""
    records = []
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        for count in (16, 4096):
            batch = rows.slice(slice(0, count))
            calls = max(1, 4096 // (count * 4))
            for name, forward in setups.items():
                forward(batch.sparse, batch.dense)
                with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as profiler:
                    for _ in range(calls):
                        forward(batch.sparse, batch.dense)
                events = [e for e in profiler.key_averages() if not e.key.startswith("[")]
                total_us = sum(e.self_cpu_time_total for e in events) / calls
                for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
                    records.append(
                        {
                            "setup": name,
                            "rows": count,
                            "op": event.key,
                            "calls_per_forward": event.count / calls,
                            "self_ms_per_forward": event.self_cpu_time_total / calls / 1000,
                            "share": event.self_cpu_time_total / calls / total_us,
                        }
                    )
                records.append(
                    {
                        "setup": name,
                        "rows": count,
                        "op": "(all operators)",
                        "calls_per_forward": sum(e.count for e in events) / calls,
                        "self_ms_per_forward": total_us / 1000,
                        "share": 1.0,
                    }
                )
    load_after = os.getloadavg()[0]
    for record in records:
        record |= {"load_before": round(load_before, 2), "load_after": round(load_after, 2)}
    lines = [
        "# Where the fused forward's time goes (census pool, torch.profiler)",
        "",
        f"`python benchmarks/fused_forward.py --profile`, {time.strftime('%Y-%m-%d')}, 1 torch "
        "thread, inference mode, the setups of `fused_forward.md` (`members`: the four "
        "members' forwards; `emm`: the shipped fused model, every correction kept). Per "
        f"forward: operator calls and self CPU time (the profiler adds its own per-call "
        f"cost, so totals exceed `fused_forward.md`'s). Load (1 min) before / after: "
        f"{load_before:.2f} / {load_after:.2f}.",
        "",
        "| setup | rows | operator | calls / forward | self ms / forward | share |",
        "|---|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['setup']} | {r['rows']} | `{r['op']}` | {r['calls_per_forward']:.0f} | "
        f"{r['self_ms_per_forward']:.3f} | {r['share']:.0%} |"
        for r in records
    ]
    output.write_text("\n".join(lines) + "\n")
    output.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    print(output.read_text())


if __name__ == "__main__":
    main()
