"""The simulate airshower, inspect and demo commands, including their error paths."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from detgan import __version__
from detgan.cli import main
from detgan.io.native import read_arrays, read_attrs
from detgan.sim.airshower import make_config, simulate


def _run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_writes_the_spec_layout(tmp_path, capsys):
    out = tmp_path / "a.h5"
    code, stdout, _ = _run(
        capsys,
        "simulate",
        "airshower",
        "--preset",
        "reconstruction",
        "--variant",
        "sim",
        "-n",
        "250",
        "--seed",
        "4",
        "-o",
        str(out),
        "--store-components",
        "--batch-size",
        "100",
        "--workers",
        "2",
        "--set",
        "s0=850",
        "--quiet",
    )
    assert code == 0 and "wrote 250 events" in stdout
    a = read_arrays(out)
    expected = {
        "traces": ((9, 9, 80), "float32"),
        "triggered": ((9, 9), "bool"),
        "arrival_time": ((9, 9), "float32"),
        "footprint": ((9, 9), "float32"),
        "energy": ((), "float64"),
        "log10_energy": ((), "float64"),
        "xmax": ((), "float64"),
        "core": ((3,), "float64"),
        "axis": ((3,), "float64"),
        "muon_traces": ((9, 9, 80), "float32"),
        "em_traces": ((9, 9, 80), "float32"),
    }
    assert set(a) == set(expected)
    for name, (shape, dtype) in expected.items():
        assert a[name].shape == (250, *shape) and a[name].dtype == dtype, name
    attrs = read_attrs(out)
    assert attrs["variant"] == "sim" and attrs["preset"] == "reconstruction"
    assert attrs["seed"] == 4 and attrs["package_version"] == __version__
    assert attrs["overrides"] == ["s0"] and attrs["n_events"] == 250
    assert attrs["trigger_threshold"] == pytest.approx(57.6) and attrs["s0"] == 850
    cfg_json = json.loads(attrs["config_json"])
    assert cfg_json["trigger_threshold"] == pytest.approx(57.6) and cfg_json["seed"] == 4
    # The file equals the in-memory simulation of the same configuration (workers don't matter).
    cfg = make_config("reconstruction", "sim", s0=850.0, store_components=True, batch_size=100)
    ref = simulate(cfg, 250, seed=4)
    for name in expected:
        assert np.array_equal(a[name], ref[name]), name
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]


def test_float16_option(tmp_path, capsys):
    out = tmp_path / "h.h5"
    assert (
        _run(capsys, "simulate", "airshower", "-n", "20", "-o", str(out), "--float16", "--quiet")[0]
        == 0
    )
    assert read_arrays(out, ["traces"])["traces"].dtype == np.float16


def test_no_traces_option_keeps_footprints(tmp_path, capsys):
    full, light = tmp_path / "f.h5", tmp_path / "l.h5"
    for out, extra in ((full, []), (light, ["--no-traces"])):
        assert (
            _run(capsys, "simulate", "airshower", "-n", "30", "-o", str(out), "--quiet", *extra)[0]
            == 0
        )
    a, b = read_arrays(full), read_arrays(light)
    assert "traces" not in b and set(a) - set(b) == {"traces"}
    assert np.array_equal(a["footprint"], b["footprint"])
    assert read_attrs(light)["overrides"] == []


def test_config_file_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"energy_min": 10, "energy_max": 20}))
    out = tmp_path / "a.h5"
    assert (
        _run(
            capsys,
            "simulate",
            "airshower",
            "-n",
            "50",
            "-o",
            str(out),
            "--config",
            str(cfg),
            "--quiet",
        )[0]
        == 0
    )
    energy = read_arrays(out, ["energy"])["energy"]
    assert energy.min() >= 10 and energy.max() <= 20
    assert read_attrs(out)["overrides"] == ["energy_min", "energy_max"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "0"], "detgan: error: -n/--events must be at least 1, got 0"),
        (["-n", "5", "--preset", "x"], "detgan: error: argument --preset: invalid choice: 'x'"),
        (["-n", "5", "--set", "bogus=1"], "detgan: error: unknown setting(s) bogus"),
        (["-n", "5", "--set", "energy_min=-1"], "detgan: error: energy_min=-1.0 must be positive"),
        (["-n", "5", "--set", "s0"], "detgan: error: --set expects key=value, got 's0'"),
        (["-n", "5", "--workers", "0"], "detgan: error: --workers must be at least 1, got 0"),
        (
            ["-n", "5", "--config", "missing.json"],
            "detgan: error: config file 'missing.json' not found",
        ),
    ],
)
def test_bad_input_gives_one_line_and_no_file(tmp_path, capsys, args, message):
    out = tmp_path / "a.h5"
    code, _, err = _run(capsys, "simulate", "airshower", "-o", str(out), *args)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_existing_output_and_unwritable_directory(tmp_path, capsys):
    out = tmp_path / "a.h5"
    out.write_text("keep me")
    code, _, err = _run(capsys, "simulate", "airshower", "-n", "5", "-o", str(out))
    assert code == 2 and "already exists; pass --overwrite" in err
    assert out.read_text() == "keep me"
    code, _, err = _run(
        capsys, "simulate", "airshower", "-n", "5", "-o", str(tmp_path / "no" / "a.h5")
    )
    assert code == 2 and "does not exist; create it first" in err


def test_inspect_prints_summary(tmp_path, capsys):
    out = tmp_path / "a.h5"
    _run(capsys, "simulate", "airshower", "-n", "100", "-o", str(out), "--quiet")
    code, stdout, _ = _run(capsys, "inspect", str(out))
    assert code == 0
    assert "100 events, kind airshower" in stdout and "variant=data" in stdout
    assert "footprint" in stdout and "energy:" in stdout and "<N_trig>" in stdout


def test_inspect_refuses_corrupt_file(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    code, _, err = _run(capsys, "inspect", str(bad))
    assert code == 2 and "not a readable HDF5 file" in err


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "detgan", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"detgan {__version__}"


def test_full_disk_gives_one_line_and_no_file(tmp_path, capsys, monkeypatch):
    import errno

    from detgan.io.native import H5Writer

    def full(self, start, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(H5Writer, "write", full)
    out = tmp_path / "a.h5"
    code, _, err = _run(capsys, "simulate", "airshower", "-n", "10", "-o", str(out), "--quiet")
    assert code == 1
    assert err == "detgan: error: No space left on device; free some space or write elsewhere\n"
    assert list(tmp_path.iterdir()) == []


def test_inspect_summarises_calorimeter_files(tmp_path, capsys):
    out = tmp_path / "c.npz"
    assert (
        _run(
            capsys,
            "simulate",
            "calo",
            "--geometry",
            "lhcb-ecal",
            "-n",
            "20",
            "-o",
            str(out),
            "--quiet",
        )[0]
        == 0
    )
    code, stdout, _ = _run(capsys, "inspect", str(out))
    assert code == 0
    assert "20 showers, format lhcb, 900 cells" in stdout and "incident energy" in stdout
