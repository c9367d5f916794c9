"""Score a table of raw rows with a registered model, offline (batch scoring).

    python pipelines/score.py --model models:/emm-census-synthetic@champion \\
        --input rows.csv --output scores/
    ray job submit --working-dir . -- python pipelines/score.py --model ... --actors 4 ...

Input: CSV files with a header row (.csv, .csv.gz) or parquet files, one file or a
folder; columns named as the model's features (others are ignored) and an id column
(`--id-column`, default `row_id`). Output: parquet files in `--output` (which must be
new or empty) with the id column and one probability per task. Each of `--actors` Ray
actors loads the version `--model` names once, verified as Serve loads it.
"""

from __future__ import annotations

import argparse
import logging

from emm_ray.pipeline.cli import add_ray_options, run, setup_logging
from emm_ray.runtime import init_ray
from emm_ray.serve.batch import DEFAULT_ID_COLUMN, ScoreJob, score_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="models:/<name>@<alias> or /<version>")
    parser.add_argument("--input", required=True, help="CSV or parquet file, or a folder")
    parser.add_argument("--output", required=True, help="folder for the score parquet files")
    parser.add_argument("--id-column", default=DEFAULT_ID_COLUMN, help="the row id column")
    parser.add_argument("--actors", type=int, default=1, help="scoring actors (Ray Data pool)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8192, help="rows per model call")
    parser.add_argument(
        "--buffer-mib", type=int, default=512, help="MiB of rows read ahead of the actors"
    )
    add_ray_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(logging.WARNING)
    job = ScoreJob(
        model_uri=args.model,
        input_path=args.input,
        output_dir=args.output,
        tracking_uri=args.tracking_uri,
        id_column=args.id_column,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        batch_size=args.batch_size,
        buffer_mib=args.buffer_mib,
    )
    init_ray(num_cpus=args.num_cpus, worker_logs=args.ray_logs)
    report = score_table(job)
    print(
        f"scored {report.rows} rows with {report.model_name} version {report.version} "
        f"in {report.seconds:.1f} s ({report.rows_per_s:,.0f} rows/s); tasks "
        f"{', '.join(report.tasks)}; parquet in {report.output_dir}"
    )
    return 0


if __name__ == "__main__":
    run(main)
