"""``detgan simulate calo`` and ``detgan convert`` end to end."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from detgan.cli import main
from detgan.io.showers import load_showers


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("geometry", "name", "fmt"),
    [
        ("atlas-cluster", "a.h5", "native"),
        ("calochallenge-1-photons", "cc.h5", "calochallenge"),
        ("calogan", "cg.h5", "calogan"),
        ("lhcb-ecal", "l.npz", "lhcb"),
        ("calochallenge-2", "d2.h5", "calochallenge"),
        ("atlas-cluster-247", "b.h5", "native"),
    ],
)
def test_simulate_writes_the_natural_format_with_provenance(tmp_path, capsys, geometry, name, fmt):
    path = tmp_path / name
    code, out, _ = _run(
        capsys,
        "simulate",
        "calo",
        "--geometry",
        geometry,
        "-n",
        "30",
        "--seed",
        "4",
        "-o",
        str(path),
        "--quiet",
        "--batch-size",
        "20",
    )
    assert code == 0 and out.startswith("wrote 30 ")
    showers = load_showers(path)
    assert len(showers) == 30 and showers.meta["source_format"] == fmt
    attrs = showers.meta["attrs"]
    assert attrs["seed"] == 4 and json.loads(attrs["config_json"])["geometry"] == geometry
    assert attrs["package_version"]


def test_same_seed_same_file_and_overrides(tmp_path, capsys):
    args = [
        "simulate",
        "calo",
        "--geometry",
        "atlas-cluster",
        "-n",
        "25",
        "--seed",
        "9",
        "--quiet",
        "--energy",
        "50",
        "--set",
        "max_spots=2000",
    ]
    assert _run(capsys, *args, "-o", str(tmp_path / "a.h5"))[0] == 0
    assert _run(capsys, *args, "-o", str(tmp_path / "b.h5"))[0] == 0
    a, b = load_showers(tmp_path / "a.h5"), load_showers(tmp_path / "b.h5")
    np.testing.assert_array_equal(a.cells, b.cells)
    assert np.all(a.energy == 50_000.0)
    assert json.loads(a.meta["attrs"]["config_json"])["max_spots"] == 2000


def test_simulate_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "x.h5"
    out.write_bytes(b"")
    code, _, err = _run(
        capsys, "simulate", "calo", "--geometry", "calogan", "-n", "5", "-o", str(out), "--quiet"
    )
    assert (
        code == 2
        and err == f"detgan: error: output '{out}' already exists; pass --overwrite to replace it\n"
    )
    code, _, err = _run(
        capsys,
        "simulate",
        "calo",
        "--geometry",
        "lhcb-ecal",
        "-n",
        "5",
        "-o",
        str(tmp_path / "l.h5"),
        "--quiet",
    )
    assert code == 2 and err == (
        "detgan: error: lhcb-ecal showers are written as .npz; "
        f"name the output '{tmp_path / 'l.npz'}'\n"
    )
    code, _, err = _run(
        capsys,
        "simulate",
        "calo",
        "--geometry",
        "calogan",
        "-n",
        "5",
        "-o",
        str(tmp_path / "y.h5"),
        "--set",
        "spots=3",
    )
    assert code == 2 and err.startswith("detgan: error: unknown setting(s) spots for CaloSimConfig")


def test_convert_round_trips_through_native(tmp_path, capsys):
    src = tmp_path / "cc.h5"
    main(
        [
            "simulate",
            "calo",
            "--geometry",
            "calochallenge-1-photons",
            "-n",
            "30",
            "-o",
            str(src),
            "--quiet",
        ]
    )
    capsys.readouterr()
    code, out, _ = _run(capsys, "convert", str(src), "-o", str(tmp_path / "n.h5"))
    assert (
        code == 0
        and out == f"converted 30 showers from calochallenge to native: {tmp_path / 'n.h5'}\n"
    )
    code, out, _ = _run(
        capsys,
        "convert",
        str(tmp_path / "n.h5"),
        "-o",
        str(tmp_path / "back.h5"),
        "--chunk-size",
        "7",
    )
    assert code == 0 and "from native to calochallenge" in out
    a, b = load_showers(src), load_showers(tmp_path / "back.h5")
    np.testing.assert_array_equal(a.cells, b.cells)
    with h5py.File(tmp_path / "back.h5") as f:
        assert sorted(f) == ["incident_energies", "showers"]
        assert f.attrs["source_format"] == "native"


def test_convert_lhcb_and_calogan_and_refusals(tmp_path, capsys):
    src = tmp_path / "l.npz"
    main(["simulate", "calo", "--geometry", "lhcb-ecal", "-n", "12", "-o", str(src), "--quiet"])
    assert _run(capsys, "convert", str(src), "-o", str(tmp_path / "l.h5"))[0] == 0
    assert _run(capsys, "convert", str(tmp_path / "l.h5"), "-o", str(tmp_path / "l2.npz"))[0] == 0
    a, b = load_showers(src), load_showers(tmp_path / "l2.npz")
    np.testing.assert_array_equal(a.cells, b.cells)
    np.testing.assert_allclose(a.conditions["momentum"], b.conditions["momentum"], rtol=1e-6)
    code, _, err = _run(
        capsys, "convert", str(src), "-o", str(tmp_path / "c.h5"), "--to", "calogan"
    )
    assert code == 2 and err == (
        "detgan: error: cannot write 'lhcb-ecal' showers as CaloGAN: the cell layouts differ; "
        "use --to native\n"
    )
    assert not (tmp_path / "c.h5").exists()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    code, _, err = _run(capsys, "convert", str(bad), "-o", str(tmp_path / "o.h5"))
    assert code == 2 and err == (
        f"detgan: error: file '{bad}' is not a readable HDF5 file (corrupt or truncated?); "
        "regenerate it\n"
    )
