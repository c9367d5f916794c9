"""The whole emm-ray run: raw data to a served multi-task model.

    python pipelines/full.py                              # built-in default, local Ray
    python pipelines/full.py --config configs/census.yaml --output outputs/census
    ray job submit --working-dir . -- python pipelines/full.py --config configs/census.yaml

Stages: prepare -> pool -> fuse -> baselines -> tune -> evaluate -> register -> serve
(`--stages` or the config's `stages:` picks a subset). Every stage resumes from what
MLflow already holds; `--force` retrains. The config is checked (files, stages, search
space, pool spec) before any work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path

from emm_ray.pipeline.cli import add_ray_options, run, setup_logging
from emm_ray.pipeline.config import STAGES, load_pipeline_config
from emm_ray.pipeline.run import Pipeline
from emm_ray.progress import Console
from emm_ray.runtime import init_ray


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="run config YAML")
    parser.add_argument(
        "--output", type=Path, default=None, help="report directory (default outputs/<model>)"
    )
    parser.add_argument(
        "--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)}"
    )
    parser.add_argument("--force", action="store_true", help="retrain what MLflow already has")
    parser.add_argument(
        "--keep-serving", action="store_true", help="keep the deployment up until Ctrl-C"
    )
    add_ray_options(parser, tracking=False)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(logging.WARNING)
    config = load_pipeline_config(args.config, args.stages)
    output = (args.output or Path("outputs") / config.model_name).resolve()
    output.mkdir(parents=True, exist_ok=True)
    init_ray(num_cpus=args.num_cpus, worker_logs=args.ray_logs)
    with Console() as console:
        summary = Pipeline(config, output, force=args.force, console=console).run()
    (output / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1))
    print(summary.render(), flush=True)
    if summary.serving_url and (args.keep_serving or config.serve.keep_alive):
        print("Serving until Ctrl-C ...", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    elif summary.serving_url and not os.environ.get("RAY_ADDRESS"):
        configs = {"emm-census": "census.yaml", "emm-census-synthetic": "default.yaml"}
        shipped = configs.get(config.model_name)
        how = (
            f"`serve run serve_configs/{shipped}`"
            if shipped
            else f"a serve config like serve_configs/default.yaml naming {summary.model_uri}"
        )
        print(f"Local Ray stops with this process; {how} serves {summary.model_uri} persistently.")
    return 1 if summary.pool_failures else 0


if __name__ == "__main__":
    run(main)
