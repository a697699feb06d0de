"""The ``detgan`` command line: the only place that parses arguments, prints and picks paths.

Each command group lives in its own module here and exposes ``register(commands, groups)``;
``groups`` holds the sub-command collections shared by several modules (``simulate``,
``train``, ``study``), so that e.g. ``simulate airshower`` and ``simulate calo`` can be
registered by different modules.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from detgan import __version__
from detgan.utils import DetganError, catch_interrupts, was_interrupted

__all__ = ["main", "build_parser"]

#: Modules registering commands, in the order they appear in ``detgan --help``.
COMMAND_MODULES = [
    "detgan.cli.airshower",
    "detgan.cli.calo",
    "detgan.cli.evaluate",
    "detgan.cli.footprint",
    "detgan.cli.merge",
    "detgan.cli.calo_models",
    "detgan.cli.refine",
    "detgan.cli.perf",
]

GROUPS = {
    "simulate": "run a reference Monte Carlo simulation and write its output file",
    "train": "train a generator, refiner or calorimeter model",
    "study": "run a paper study end to end and write a report",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the problem and where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"detgan: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="detgan",
        description="Fast particle-detector simulation with Wasserstein adversarial networks.",
    )
    parser.add_argument("--version", action="version", version=f"detgan {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, help_text in GROUPS.items():
        group = commands.add_parser(name, help=help_text, description=help_text)
        groups[name] = group.add_subparsers(dest="kind", metavar="KIND")
        group.set_defaults(func=_group_help(group))
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands, groups)
    return parser


def _group_help(group: argparse.ArgumentParser):
    def show(_args: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return 2

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return a non-zero exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    catch_interrupts()
    try:
        if "LOCAL_RANK" in os.environ:  # one process of a torchrun group
            from detgan.distributed import init_from_environment

            init_from_environment(args.command)
        code = int(args.func(args) or 0)
        if was_interrupted():
            raise KeyboardInterrupt
        return code
    except DetganError as exc:
        print(f"detgan: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `detgan inspect FILE | head`: the reader has gone
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("detgan: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except MemoryError:
        print("detgan: error: out of memory; use a smaller --batch-size", file=sys.stderr)
        return 1
    except OSError as exc:
        # Disk full, permissions, vanished files: one line, no traceback.
        name = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        hint = "; free some space or write elsewhere" if exc.errno == errno.ENOSPC else ""
        print(f"detgan: error: {exc.strerror or exc}{name}{hint}", file=sys.stderr)
        return 1
