"""`detgan demo`: the whole footprint pipeline, here on a tiny budget."""

from __future__ import annotations

import json

from detgan.cli import main


def test_demo_runs_every_step_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "-n", "300", "--reference-events", "200", "--seed", "3"]
    assert main([*args, "--iterations", "4"]) == 0
    stdout = capsys.readouterr().out
    for step in ("[1/4] simulate", "[2/4] simulate", "[3/4] train", "[4/4] footprint study"):
        assert step in stdout
    assert "constrainer energy vs label correlation" in stdout and "report:" in stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["iterations"] == 4 and report["n_events"] == 200
    # A second run reuses the samples and resumes the training where it stopped.
    assert main([*args, "--iterations", "6"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("exists, reused") == 2 and "(resuming)" in stdout
    assert json.loads((out / "report" / "report.json").read_text())["iterations"] == 6


def test_demo_refuses_tiny_samples(capsys):
    assert main(["demo", "-n", "10"]) == 2
    err = capsys.readouterr().err
    assert "the demo needs at least 100 training and 100 reference events" in err
