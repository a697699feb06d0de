"""Options shared by several commands, so each is spelt and documented once."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from detgan.config import load_config_file, parse_assignments

__all__ = [
    "add_seed",
    "add_output",
    "add_runtime",
    "add_overrides",
    "read_overrides",
    "add_training",
    "runtime",
    "configured",
    "run_training",
]


def add_seed(parser: argparse.ArgumentParser, default: int | None = 0) -> None:
    parser.add_argument(
        "--seed", type=int, default=default, help="random seed (default: %(default)s)"
    )


def add_output(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("-o", "--output", required=True, help=help_text)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output instead of refusing"
    )


def add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: all available cores)",
    )


def add_overrides(parser: argparse.ArgumentParser, what: str, example: str) -> None:
    """``--config FILE`` (JSON or TOML) and repeatable ``--set NAME=VALUE`` for ``what``."""
    parser.add_argument("--config", help=f"JSON or TOML file of {what} overrides")
    parser.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help=f"override one setting, e.g. --set {example} (repeatable)",
    )


def add_training(parser: argparse.ArgumentParser, example: str) -> None:
    """The options every ``train`` command shares: ``-o RUN``, ``--overwrite``, ``--resume``,
    ``--config``/``--set`` (``example``: a ``NAME=VALUE``), ``--seed``, runtime, ``--quiet``."""
    add_output(parser, "run directory")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in -o from its checkpoint"
    )
    add_overrides(parser, "setting", example)
    add_seed(parser, default=None)
    add_runtime(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def read_overrides(args: argparse.Namespace, *forbidden: str) -> dict:
    """The settings of ``--config`` updated by ``--set``; ``forbidden`` names have options."""
    values = load_config_file(args.config) if args.config else {}
    values.update(parse_assignments(args.set))
    for name in forbidden:
        if name in values:
            from detgan.utils import DetganError

            raise DetganError(f"set {name} with --{name}, not in the config overrides")
    return values


def runtime(args: argparse.Namespace) -> str:
    """Applies ``--threads`` and resolves ``--device`` (auto|cpu|cuda[:i]); the device name."""
    from detgan.utils import resolve_device, set_threads

    set_threads(args.threads)
    return str(resolve_device(args.device))


def configured(args: argparse.Namespace, setup: Any) -> Any:
    """A preset ``setup`` with the ``--config``/``--set``/``--seed`` overrides of a train
    command (validated here, before any work)."""
    overrides = read_overrides(args)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.resume and overrides:
        print("detgan: resuming: the run's stored configuration is used", file=sys.stderr)
    return setup.with_overrides(overrides)


def run_training(
    args: argparse.Namespace,
    what: str,
    setup: Any,
    train: Callable[..., Any],
    *inputs: Any,
    **options: Any,
) -> int:
    """The ``train`` commands: the :func:`configured` ``setup`` is trained by ``train(setup,
    *inputs, args.output, device=…, resume=…, overwrite=…, progress=…, **options)`` from the
    run's seed; prints where the run is and how long it took."""
    from detgan.utils import seed_everything

    device = runtime(args)
    seed_everything(setup.train.seed)
    start = time.perf_counter()
    run = train(
        setup,
        *inputs,
        args.output,
        device=device,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **options,
    )
    print(f"trained {what} run '{run}' in {time.perf_counter() - start:.0f} s on {device}")
    return 0
