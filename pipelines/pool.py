"""Train a pool of single-task models (the `pool` stage) on Ray, logged to MLflow.

    python pipelines/pool.py                                   # synthetic census, small pool
    python pipelines/pool.py --config configs/pools/census_full.yaml \
        --data data.yaml --prepared-dir prepared/census-real    # a dataset config (YAML)
    python pipelines/pool.py --data prepared/census-real       # an already prepared directory

`--data` takes a prepared directory (holding `split.json`) or a dataset config YAML
(`emm_ray.data.prepare.DatasetConfig`), which is prepared into `--prepared-dir` unless
already there. Rerunning skips members already trained for the same data and spec.
Exit status 1 when any member failed (the others are trained and logged regardless).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emm_ray import storage
from emm_ray.config import load_yaml_config
from emm_ray.data.prepare import SPLIT_FILE, DatasetConfig, PreparedDataset, prepare_dataset
from emm_ray.errors import EmmError
from emm_ray.pipeline.cli import add_ray_options, run, setup_logging
from emm_ray.progress import Console
from emm_ray.runtime import init_ray
from emm_ray.train.pool import train_pool
from emm_ray.train.pool_spec import load_pool_spec

DEFAULT_POOL = Path(__file__).resolve().parents[1] / "configs" / "pools" / "census_small.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_POOL, help="pool spec YAML")
    parser.add_argument(
        "--data",
        default=None,
        help="prepared dataset (directory or object store URI) or dataset config YAML "
        "(default: synthetic census)",
    )
    parser.add_argument(
        "--prepared-dir",
        default=None,
        help="where to prepare a dataset config, a directory or an object store URI "
        "(default: prepared/<config name>)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write pool_report.json/.md here")
    parser.add_argument(
        "--storage",
        default="ray_results",
        help="Ray Train checkpoints: a directory or an object store URI",
    )
    parser.add_argument("--members", default=None, help="comma-separated subset of members")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="members trained at once (default: as many as resources allow)",
    )
    parser.add_argument("--force", action="store_true", help="retrain members already trained")
    add_ray_options(parser)
    return parser.parse_args(argv)


def resolve_data(data: str | None, prepared_dir: str | None) -> PreparedDataset:
    """A prepared dataset as is; a dataset config (or the default one) prepared first."""
    if data is not None and storage.is_remote(data):
        return PreparedDataset.load(data)
    path = None if data is None else Path(data)
    if path is not None and path.is_dir() and (path / SPLIT_FILE).is_file():
        return PreparedDataset.load(path)
    if path is not None and path.is_dir():
        raise EmmError(f"{path} is a directory without {SPLIT_FILE}: not a prepared dataset")
    config = load_yaml_config(path, DatasetConfig) if path is not None else DatasetConfig()
    target = prepared_dir or Path("prepared") / (path.stem if path is not None else "default")
    return prepare_dataset(config, target)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    spec = load_pool_spec(args.config)
    init_ray(num_cpus=args.num_cpus, worker_logs=args.ray_logs)  # first: data copies per node
    prepared = resolve_data(args.data, args.prepared_dir)
    spec.check_tasks(prepared.schema)
    with Console(stage="pool"):
        report = train_pool(
            spec,
            prepared,
            storage_path=args.storage,
            tracking_uri=args.tracking_uri,
            max_concurrent=args.max_concurrent,
            only=args.members.split(",") if args.members else None,
            force=args.force,
        )
    table = report.table()
    print(f"\npool {report.pool} on {prepared.location} ({report.wall_seconds:.1f} s)\n\n{table}\n")
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "pool_report.json").write_text(json.dumps(report.to_dict(), indent=1))
        (args.output / "pool_report.md").write_text(table + "\n")
    if report.failed:
        print(
            f"{len(report.failed)} member(s) failed: {[m.name for m in report.failed]}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    run(main)
