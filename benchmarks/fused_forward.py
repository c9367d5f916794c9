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

Speed does not depend on the weights' values, so the members are freshly initialised;
what it depends on (architectures, widths, levels, which corrections are kept) is as in
the census benchmark. Writes `benchmarks/results/fused_forward.md` and `.json` (rows
`{"model", "rows", "ms", "ratio_to_members", "load_before", "load_after"}`).

    python benchmarks/fused_forward.py [--compile]
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

import torch
from fusion_benchmark import MEMBER_HPARAMS, POOLS  # the same pool, run as a script

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


if __name__ == "__main__":
    main()
