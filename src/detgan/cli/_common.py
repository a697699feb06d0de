"""Options shared by several commands, so each is spelt and documented once."""

from __future__ import annotations

import argparse

__all__ = ["add_seed", "add_output", "add_runtime"]


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
