"""Tests for detgan.studies.footprint and detgan.cli.footprint on small synthetic footprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detgan.cli import main
from detgan.io.native import read_arrays, read_attrs, write_arrays
from detgan.studies.footprint import (
    FOOTPRINT_PRESETS,
    footprint_preset,
    generate,
    load_footprint_model,
    parse_energy_spec,
    run_footprint_study,
    study_observables,
    train_footprint,
)
from detgan.train import load_checkpoint
from detgan.utils import DetganError

THRESHOLD = 2.065


def synthetic_footprints(n: int, seed: int) -> dict[str, np.ndarray]:
    """A radially falling pattern around (4, 4) whose amplitude grows with energy; stations
    below the trigger threshold 2.065 read 0, as in the simulation."""
    rng = np.random.default_rng(seed)
    energy = rng.uniform(1, 100, n)
    i, j = np.meshgrid(np.arange(9), np.arange(9), indexing="ij")
    r = np.hypot(i - 4 + rng.normal(0, 0.3, (n, 1, 1)), j - 4 + rng.normal(0, 0.3, (n, 1, 1)))
    value = np.log10(energy)[:, None, None] + 5.0 - 1.2 * r + rng.normal(0, 0.1, (n, 9, 9))
    footprint = np.where(value >= THRESHOLD, value, 0.0).astype(np.float32)
    return {"footprint": footprint, "energy": energy, "log10_energy": np.log10(energy) + 18}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp")
    train, ref = root / "train.h5", root / "ref.h5"
    write_arrays(train, synthetic_footprints(2000, 1), {"trigger_threshold": 115.2, "n_side": 9})
    write_arrays(ref, synthetic_footprints(400, 2), {"trigger_threshold": 115.2, "n_side": 9})
    return train, ref


def tiny_setup(**changes):
    values = dict(
        iterations=8,
        n_critic=2,
        batch_size=32,
        hidden=16,
        latent_dim=4,
        checkpoint_every=4,
        pretrain_steps=3,
        snapshots=3,
    )
    values.update(changes)
    return footprint_preset("quick").with_overrides(values)


@pytest.fixture(scope="module")
def run(files, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "run"
    torch.manual_seed(0)
    return train_footprint(tiny_setup(), files[0], run_dir, progress=False)


def test_presets_follow_the_paper_columns():
    journal, arxiv = footprint_preset("paper-journal"), footprint_preset("paper-arxiv")
    assert (journal.train.constraint_weight, journal.train.gp_weight) == (0.01, 10.0)
    assert (arxiv.train.constraint_weight, arxiv.train.gp_weight) == (0.001, 3.0)
    assert (journal.train.batch_size, arxiv.train.batch_size) == (128, 64)
    assert (journal.train.n_critic, arxiv.train.n_critic) == (10, 8)
    assert (journal.data.epochs, arxiv.data.epochs) == (500, 100)
    assert (journal.train.decay_generator, journal.train.decay_critic) == (1e-4, 1e-5)
    assert arxiv.train.decay_critic == 1e-4
    assert journal.data.pretrain_epochs == 3 and journal.train.pretrain_lr == 1e-3
    assert arxiv.data.pretrain_epochs == 0
    assert journal.model.architecture == "paper" and journal.model.latent_dim == 80
    assert set(FOOTPRINT_PRESETS) == {"paper-journal", "paper-arxiv", "quick", "full"}


def test_overrides_are_routed_and_typos_refused():
    s = footprint_preset("quick").with_overrides({"iterations": 5, "hidden": 8, "epochs": 1.0})
    assert (s.train.iterations, s.model.hidden, s.data.epochs) == (5, 8, 1.0)
    with pytest.raises(DetganError, match="unknown setting 'iteratons'; valid settings:"):
        footprint_preset("quick").with_overrides({"iteratons": 5})


def test_training_writes_checkpoint_history_config_and_snapshots(run):
    state = load_checkpoint(run)
    assert state["step"] == 8 and state["finished"]
    assert state["extra"]["threshold"] == pytest.approx(THRESHOLD, abs=1e-3)
    assert state["extra"]["snapshots"].shape[1:] == (4, 9, 9)
    assert state["extra"]["snapshot_steps"][-1] == 8
    lines = [json.loads(s) for s in (run / "history.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and {"C1", "C2", "C3", "C4"} <= set(lines[0])
    assert json.loads((run / "config.json").read_text())["train"]["iterations"] == 8


def test_resume_continues_a_stopped_run_to_the_same_weights(files, tmp_path):
    torch.manual_seed(0)
    full = train_footprint(tiny_setup(), files[0], tmp_path / "a", progress=False)
    torch.manual_seed(0)
    train_footprint(tiny_setup(), files[0], tmp_path / "b", progress=False, until=4)
    train_footprint(tiny_setup(), files[0], tmp_path / "b", progress=False, resume=True)
    a, b = load_checkpoint(full)["models"], load_checkpoint(tmp_path / "b")["models"]
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name


def test_refuses_to_reuse_a_run_directory(files, run):
    with pytest.raises(DetganError, match="is not empty; use --resume to continue it"):
        train_footprint(tiny_setup(), files[0], run, progress=False)


def test_generated_footprints_are_zero_or_above_threshold(run):
    fp = load_footprint_model(run).sample(np.full(300, 50.0), seed=1)
    assert fp.shape == (300, 9, 9) and fp.dtype == np.float32
    assert ((fp == 0) | (fp >= THRESHOLD - 1e-4)).all()


def test_generate_writes_the_simulation_layout(run, files, tmp_path):
    out = generate(run, 50, "uniform:1,100", 3, tmp_path / "gen.h5")
    arrays = read_arrays(out, ["footprint", "energy", "log10_energy"])
    assert arrays["footprint"].shape == (50, 9, 9) and arrays["energy"].dtype == np.float64
    assert 1 <= arrays["energy"].min() and arrays["energy"].max() <= 100
    assert read_attrs(out)["seed"] == 3
    again = generate(run, 50, "uniform:1,100", 3, tmp_path / "gen2.h5")
    assert np.array_equal(read_arrays(again, ["footprint"])["footprint"], arrays["footprint"])
    from_file = generate(run, None, str(files[1]), 0, tmp_path / "gen3.h5")
    assert len(read_arrays(from_file, ["energy"])["energy"]) == 400


def test_energy_spec_parsing_and_errors(files):
    assert np.array_equal(parse_energy_spec("30", 3), np.full(3, 30.0))
    assert len(parse_energy_spec(str(files[1]), 10)) == 10
    with pytest.raises(DetganError, match="must look like uniform:1,100"):
        parse_energy_spec("uniform:1", 5)
    with pytest.raises(DetganError, match="needs 0 < LOW < HIGH"):
        parse_energy_spec("uniform:5,1", 5)
    with pytest.raises(DetganError, match="holds only 400 energies; use -n 400 or fewer"):
        parse_energy_spec(str(files[1]), 401)
    with pytest.raises(DetganError, match="is neither a file, uniform:LOW,HIGH nor a number"):
        parse_energy_spec("nofile.h5", 5)


def test_observables_on_a_constructed_footprint():
    fp = np.zeros((1, 9, 9), np.float32)
    fp[0, 4, 4], fp[0, 3, 4], fp[0, 0, 0] = 6.0, 3.0, 2.5
    obs = study_observables(fp)
    assert obs["sum_log_signal"][0] == pytest.approx(11.5)
    assert obs["n_stations"][0] == 3 and obs["hottest_signal"][0] == 6.0
    assert obs["lateral"][0, 0] == 6.0  # ring 0 is the hottest station alone
    assert obs["lateral"][0, 1] == pytest.approx(3.0 / 6)  # one of six neighbours is on
    assert obs["lateral"][0, 2] == 0.0
    assert obs["lateral"][0, 5] == pytest.approx(2.5 / 12)  # (0, 0) is 5.29 spacings away


def test_study_writes_report_json_markdown_and_figures(run, files, tmp_path):
    out = tmp_path / "report"
    result = run_footprint_study(run, files[1], out, n_events=300, classifier=True)
    for name in (
        "report.json",
        "report.md",
        "fig2_patterns.png",
        "fig3_constrainer.png",
        "fig4_losses.png",
        "comparison.png",
    ):
        assert (out / name).is_file(), name
    assert len(result["deciles"]["sum_log_signal"]) == 10
    assert -1 <= result["constrainer"]["correlation"] <= 1
    assert 0 <= result["classifier"]["auc"] <= 1
    assert result["classifier"]["settings"]["n_inputs"] == 81 + 81 + 3  # + sorted, Σ, count, E
    assert json.loads((out / "report.json").read_text())["n_events"] == 300
    with pytest.raises(DetganError, match="is not empty; use --overwrite"):
        run_footprint_study(run, files[1], out, n_events=300, classifier=False)


def test_cli_train_generate_study(files, tmp_path, capsys):
    run_dir, gen, rep = tmp_path / "run", tmp_path / "g.h5", tmp_path / "rep"
    common = ["--device", "cpu", "--threads", "1"]
    assert (
        main(
            [
                "train",
                "footprint",
                "--preset",
                "quick",
                "--data",
                str(files[0]),
                "-o",
                str(run_dir),
                "--quiet",
                "--set",
                "iterations=3",
                "--set",
                "hidden=8",
                "--set",
                "pretrain_steps=1",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(["generate", str(run_dir), "-n", "20", "--energy", "50", "-o", str(gen), *common]) == 0
    )
    assert (
        main(
            [
                "study",
                "footprint",
                str(run_dir),
                "--reference",
                str(files[1]),
                "-o",
                str(rep),
                "--events",
                "100",
                "--no-classifier",
                *common,
            ]
        )
        == 0
    )
    assert (rep / "report.md").is_file()
    assert (
        main(["generate", str(run_dir), "-n", "5", "--energy", "-3", "-o", str(tmp_path / "x.h5")])
        == 2
    )
    assert "energy -3 must be a positive number (EeV)" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["paper-journal", "paper-arxiv"])
def test_paper_presets_train_and_sample(files, tmp_path, preset):
    setup = footprint_preset(preset).with_overrides(
        {
            "epochs": 0.0,
            "pretrain_epochs": 0.0,
            "iterations": 2,
            "n_critic": 1,
            "batch_size": 8,
            "pretrain_steps": 1,
            "snapshots": 2,
            "constrainer_width": 8,
        }
    )
    run_dir = train_footprint(setup, files[0], tmp_path / "run", progress=False)
    fp = load_footprint_model(run_dir).sample(np.array([10.0, 90.0]), seed=0)
    assert fp.shape == (2, 9, 9) and (fp >= 0).all()


def test_epochs_set_iterations_from_the_sample_size(files, tmp_path):
    from detgan.studies.footprint import _resolved

    setup = footprint_preset("paper-journal")
    resolved = _resolved(setup, 12800)
    assert resolved.train.iterations == 500 * 12800 // (128 * 10)
    assert resolved.train.pretrain_steps == 3 * 12800 // 128
