"""Options shared by several commands, so each is spelt and documented once."""

from __future__ import annotations

import argparse

from detgan.config import load_config_file, parse_assignments

__all__ = ["add_seed", "add_output", "add_runtime", "add_overrides", "read_overrides"]


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


def read_overrides(args: argparse.Namespace, *forbidden: str) -> dict:
    """The settings of ``--config`` updated by ``--set``; ``forbidden`` names have options."""
    values = load_config_file(args.config) if args.config else {}
    values.update(parse_assignments(args.set))
    for name in forbidden:
        if name in values:
            from detgan.utils import DetganError

            raise DetganError(f"set {name} with --{name}, not in the config overrides")
    return values
