"""The CLI frame: help for every command, fast start-up, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from detgan.cli import build_parser, main


def test_building_the_parser_does_not_import_torch():
    """Command modules import heavy libraries inside their handlers, so `detgan simulate`
    starts fast and its worker processes stay small."""
    code = "import sys, detgan.cli; detgan.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _subcommands(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subcommands(sub))


def test_every_command_has_help_text(capsys):
    names = dict(_subcommands(build_parser()))
    assert {"simulate", "simulate airshower", "inspect", "demo"} <= set(names)
    for name, sub in names.items():
        assert sub.description, f"'{name}' has no description"
        assert sub.format_help().strip()


def test_no_command_and_unknown_command(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("detgan: error: argument COMMAND: invalid choice: 'frobnicate'")
