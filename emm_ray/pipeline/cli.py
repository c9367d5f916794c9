"""What every `pipelines/*.py` command shares: the Ray and tracking options, logging, and
how an emm-ray error ends the process (its message on stderr, exit code 2, no
traceback: the message names the file, field or value at fault)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from emm_ray.errors import EmmError

ERROR_EXIT_CODE = 2


def add_ray_options(parser: argparse.ArgumentParser, *, tracking: bool = True) -> None:
    """`--num-cpus`, `--ray-logs` and (with `tracking`) `--tracking-uri`."""
    if tracking:
        parser.add_argument(
            "--tracking-uri",
            default=None,
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)",
        )
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of a locally started Ray (ignored when attaching to a cluster)",
    )
    parser.add_argument(
        "--ray-logs",
        action="store_true",
        help="stream every Ray worker's output here (default: Ray's log files, whose "
        "directory is printed; training epochs print one line each)",
    )


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")


def run(main: Callable[[], int]) -> NoReturn:
    """Exit with `main()`'s code, or with `ERROR_EXIT_CODE` and the message of an
    emm-ray error."""
    try:
        code = main()
    except EmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = ERROR_EXIT_CODE
    sys.exit(code)
