"""The ``detgan evaluate`` command on small native air-shower files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detgan.cli import main
from detgan.io.native import write_arrays


def _file(path, seed, n=300, scale=1.0, nan=False):
    rng = np.random.default_rng(seed)
    f = np.zeros((n, 9, 9), np.float32)
    f[:, 4, 4] = rng.normal(5, 0.5, n) * scale
    f[:, 3:6, 3:6] += np.clip(rng.normal(2, 0.5, (n, 3, 3)), 0, None)
    if nan:
        f[7, 0, 0] = np.nan
    write_arrays(path, {"footprint": f, "energy": rng.uniform(1, 100, n)}, {"layout": "offset"})
    return path


def test_evaluate_footprints(tmp_path, capsys):
    ref, cand = _file(tmp_path / "ref.h5", 1), _file(tmp_path / "cand.h5", 2, n=250, scale=1.05)
    args = [
        "evaluate",
        "--reference",
        str(ref),
        "--candidate",
        str(cand),
        "-o",
        str(tmp_path / "rep"),
        "--classifier-runs",
        "1",
        "--no-fpd",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--threads",
        "1",
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["inputs"]["kind"] == "airshower"
    m = summary["families"]["footprint"]["metrics"]
    assert m["classifier_low"]["n_per_class"] == 250
    assert (tmp_path / "rep" / "report.html").stat().st_size > 10_000
    assert "report:" in capsys.readouterr().out
    # second run hits the reference cache and gives the same floor
    assert main(args[:6] + [str(tmp_path / "rep2")] + args[7:]) == 0
    again = json.loads((tmp_path / "rep2" / "summary.json").read_text())
    assert again["inputs"]["reference_cache_hit"] == ["footprint"]
    assert again["families"]["footprint"]["floor"] == summary["families"]["footprint"]["floor"]


def test_evaluate_errors(tmp_path, capsys):
    ref, bad = _file(tmp_path / "ref.h5", 1), _file(tmp_path / "bad.h5", 3, nan=True)
    rc = main(
        [
            "evaluate",
            "--reference",
            str(ref),
            "--candidate",
            str(bad),
            "-o",
            str(tmp_path / "r"),
            "--cache-dir",
            "none",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "NaN or inf" in err and "Traceback" not in err
    rc = main(
        [
            "evaluate",
            "--reference",
            str(ref),
            "--candidate",
            str(tmp_path / "missing.h5"),
            "-o",
            str(tmp_path / "r"),
            "--cache-dir",
            "none",
        ]
    )
    assert rc == 2 and "not found" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    rc = main(
        [
            "evaluate",
            "--reference",
            str(ref),
            "--candidate",
            str(ref),
            "-o",
            str(tmp_path / "exists"),
        ]
    )
    assert rc == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_simulated_variants(tmp_path):
    """'sim' against 'data' air showers: the classifier and the footprint features see it."""
    from detgan.sim.airshower import make_config, simulate

    for name, variant, seed in (("data", "data", 1), ("sim", "sim", 2)):
        write_arrays(
            tmp_path / f"{name}.h5", simulate(make_config("paper", variant), n=1500, seed=seed)
        )
    assert (
        main(
            [
                "evaluate",
                "--reference",
                str(tmp_path / "data.h5"),
                "--candidate",
                str(tmp_path / "sim.h5"),
                "-o",
                str(tmp_path / "rep"),
                "--cache-dir",
                "none",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    for fam in ("footprint", "traces"):
        m, f = s["families"][fam]["metrics"], s["families"][fam]["floor"]
        assert m["classifier_low"]["auc"] > 0.9 > 0.6 > f["classifier_low"]["auc"]
