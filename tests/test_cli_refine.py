"""Commands ``train refiner``, ``refine`` and ``study refine``: wiring, outputs, errors."""

from __future__ import annotations

import json

import pytest

from detgan.cli import build_parser, main
from detgan.io.native import read_arrays, read_attrs
from detgan.sim.airshower import make_config
from detgan.sim.run import write_airshower_file

TINY = [
    "--set",
    "channels=4",
    "--set",
    "blocks=1",
    "--set",
    "critic_width=8",
    "--set",
    "batch_size=8",
    "--set",
    "n_critic=2",
    "--quiet",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    for variant in ("sim", "data"):
        write_airshower_file(
            make_config("paper", variant), 40, 9, d / f"{variant}.h5", workers=1, progress=False
        )
    return d


def test_commands_are_registered():
    parser = build_parser()
    args = parser.parse_args(["train", "refiner", "--sim", "a", "--data", "b", "-o", "r"])
    assert args.preset == "quick" and args.func.__name__ == "run_train"
    assert parser.parse_args(["refine", "r", "s.h5", "-o", "x.h5"]).func.__name__ == "run_refine"
    args = parser.parse_args(
        [
            "study",
            "refine",
            "--sim",
            "a",
            "--data",
            "b",
            "--refiner",
            "r",
            "-o",
            "rep",
            "--preset",
            "full",
        ]
    )
    assert args.func.__name__ == "run_study" and args.preset == "full"


def test_train_resume_refine_and_study(files, capsys):
    d = files
    base = [
        "train",
        "refiner",
        "--sim",
        str(d / "sim.h5"),
        "--data",
        str(d / "data.h5"),
        "-o",
        str(d / "run"),
    ]
    assert main([*base, "--iterations", "2", *TINY]) == 0
    assert main([*base, "--iterations", "3", "--resume", "--quiet", "--threads", "1"]) == 0
    assert len((d / "run" / "history.jsonl").read_text().splitlines()) == 3
    assert (
        main(
            [
                "refine",
                str(d / "run"),
                str(d / "sim.h5"),
                "-o",
                str(d / "ref.h5"),
                "--chunk-size",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    refined = read_arrays(d / "ref.h5", ["energy", "traces"])
    assert refined["traces"].shape == (40, 9, 9, 80)
    assert (refined["energy"] == read_arrays(d / "sim.h5", ["energy"])["energy"]).all()
    assert read_attrs(d / "ref.h5")["refiner_step"] == 3
    assert (
        main(
            [
                "study",
                "refine",
                "--sim",
                str(d / "sim.h5"),
                "--data",
                str(d / "data.h5"),
                "--refiner",
                str(d / "run"),
                "-o",
                str(d / "rep"),
                "--set",
                "epochs=1",
                "--set",
                "max_train=50",
                "--set",
                "max_test=50",
                "--set",
                "width=4",
                "--set",
                "classifier_runs=2",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "mean |bias| on data: sim-trained" in out and "report:" in out
    assert "performance" in json.loads((d / "rep" / "summary.json").read_text())


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "refiner", "--sim", "missing.h5", "--data", "missing.h5", "-o", "r"],
            "file 'missing.h5' not found; simulate it with 'detgan simulate airshower'",
        ),
        (
            ["train", "refiner", "--sim", "a", "--data", "b", "-o", "r", "--set", "chanels=2"],
            "unknown setting 'chanels'; valid settings:",
        ),
        (
            ["refine", "no-run", "s.h5", "-o", "x.h5", "--chunk-size", "0"],
            "--chunk-size must be at least 1, got 0",
        ),
        (
            [
                "study",
                "refine",
                "--sim",
                "a",
                "--data",
                "b",
                "--refiner",
                "r",
                "-o",
                "o",
                "--set",
                "epochs=0",
            ],
            "epochs >= 1 and batch_size >= 2 needed",
        ),
    ],
)
def test_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_refine_with_a_run_that_is_not_a_refiner(files, tmp_path, capsys):
    assert main(["refine", str(tmp_path), str(files / "sim.h5"), "-o", str(tmp_path / "x.h5")]) == 2
    assert "checkpoint" in capsys.readouterr().err
