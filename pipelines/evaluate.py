"""Score the fused model, its pool and the baselines on a test set (the `evaluate` stage).

    python pipelines/evaluate.py                                 # synthetic census default
    python pipelines/evaluate.py --config configs/census.yaml
    python pipelines/evaluate.py --config configs/census.yaml --test-path census-income.test

The test set is the prepared test split, or `--test-path`: any raw file of the dataset's
format, encoded with the fused model's saved schema (unseen categories -> OOV). Writes
`report.json` (one row per model and task: model, kind, task, auc, logloss, rows),
`report.md` and the gate report (`gates/`) to `--output`, and logs them to MLflow.
Baselines: `train` (default) trains those not yet trained on this data (Ray Train) and
reuses the rest; `existing` scores only baselines already logged; `none` skips them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emm_ray.baselines.stage import find_baselines, train_baselines
from emm_ray.evaluation.experiment import load_experiment
from emm_ray.evaluation.stage import run_evaluation
from emm_ray.fusion.stage import find_fused_run
from emm_ray.pipeline.cli import add_ray_options, run, setup_logging
from emm_ray.runtime import init_ray
from emm_ray.tracking.store import tracking_client


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="run config YAML")
    parser.add_argument("--test-path", type=Path, default=None, help="raw file to score")
    parser.add_argument(
        "--fused-run", default=None, help="fused model run id (default: newest for this data)"
    )
    parser.add_argument(
        "--baselines",
        choices=["train", "existing", "none"],
        default="train",
        help="train missing baselines, use logged ones only, or skip them",
    )
    parser.add_argument("--output", type=Path, default=Path("reports/evaluation"))
    add_ray_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    experiment = load_experiment(args.config)
    prepared = experiment.prepared()
    schema, fingerprint = prepared.schema, str(prepared.split_info["config_hash"])
    client = tracking_client(args.tracking_uri)
    fused_run = args.fused_run or find_fused_run(
        client, experiment.fuse.experiment, experiment.fuse.name, schema.hash, fingerprint
    )
    baselines: dict[str, str] = {}
    if args.baselines == "train":
        init_ray(num_cpus=args.num_cpus, worker_logs=args.ray_logs)
        runs = train_baselines(
            experiment.baselines,
            prepared,
            storage_path=experiment.storage,
            tracking_uri=args.tracking_uri,
        )
        baselines = {run.name: run.run_id for run in runs}
    elif args.baselines == "existing":
        baselines = find_baselines(
            client,
            experiment.baselines.experiment,
            schema.hash,
            fingerprint,
            experiment.baselines.names,
        )
    result = run_evaluation(
        fused_run,
        args.output,
        prepared=None if args.test_path else prepared.path,
        test_path=args.test_path,
        baseline_runs=baselines,
        spec=experiment.evaluate,
        tracking_uri=args.tracking_uri,
    )
    print((result.output_dir / "report.md").read_text())
    print(f"reports in {result.output_dir}, MLflow run {result.run_id}")
    return 0


if __name__ == "__main__":
    run(main)
