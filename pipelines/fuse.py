"""Fuse a trained pool into one multi-task EMM model (the `fuse` stage), on Ray Train.

    python pipelines/fuse.py                                   # synthetic census default
    python pipelines/fuse.py --config configs/census.yaml      # the real census run
    python pipelines/fuse.py --config configs/census.yaml --plug RUN_ID --members a,b

The pool must be trained on the same prepared data first (pipelines/pool.py with
`--data <prepared_dir>`). Without `--plug`, fuses the members of the config's `fuse`
section (all members trained on this data by default); with `--plug RUN_ID`, adds the
pool members `--members` to that fused run's model and trains only the new parts.
Rerunning reuses a finished run with the same data and spec unless `--force`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emm_ray.errors import ConfigError
from emm_ray.evaluation.experiment import load_experiment
from emm_ray.fusion.stage import fuse_pool, plug_members
from emm_ray.pipeline.cli import add_ray_options, run, setup_logging
from emm_ray.progress import Console
from emm_ray.runtime import init_ray


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="run config YAML")
    parser.add_argument("--plug", default=None, help="fused run id to add members to")
    parser.add_argument("--members", default=None, help="comma-separated members (--plug)")
    parser.add_argument("--force", action="store_true", help="train even if already fused")
    parser.add_argument("--output", type=Path, default=None, help="write fuse_result.json here")
    add_ray_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    experiment = load_experiment(args.config)
    if args.plug is not None and not args.members:
        raise ConfigError("--plug needs --members: the pool members to add")
    init_ray(num_cpus=args.num_cpus, worker_logs=args.ray_logs)  # first: data copies per node
    prepared = experiment.prepared()
    common = {
        "storage_path": experiment.storage,
        "tracking_uri": args.tracking_uri,
        "force": args.force,
    }
    with Console(stage="fuse"):
        if args.plug is None:
            result = fuse_pool(experiment.fuse, prepared, **common)
        else:
            result = plug_members(
                experiment.fuse, prepared, args.plug, args.members.split(","), **common
            )
    summary = {
        "run_id": result.run_id,
        "status": result.status,
        "name": result.manifest.name,
        "tasks": list(result.manifest.tasks),
        "members": result.manifest.hparams["members"],
        "steps": result.manifest.hparams.get("steps"),
        "validation": result.manifest.metrics,
        "trainable_parameters": result.manifest.extra.get("trainable_parameters"),
        "total_parameters": result.manifest.extra.get("total_parameters"),
    }
    print(json.dumps(summary, indent=1))
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "fuse_result.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    run(main)
