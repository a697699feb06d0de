"""Evaluation wiring: legacy switches (§A), per-energy responses, floors of pooled arrays,
memorisation inputs and the LHCb family."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from detgan.cli import evaluate as cli_evaluate
from detgan.cli import main
from detgan.comparison import (
    LEGACY_SWITCHES,
    EvaluationSettings,
    FamilyData,
    _correlation,
    _fill_undefined,
    nn_representation,
)
from detgan.io.showers import load_showers
from detgan.observables_calo import (
    _histogram_text,
    calochallenge_text_files,
    response_per_energy,
    showers_family,
)
from detgan.sim.calorimeter import CaloSimConfig, simulate_batch
from detgan.utils import DetganError


def _family(n, pooled=None, family="calochallenge"):
    x = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 3))
    return FamilyData(family, {"a": x[:, 0]}, x, x, x, pooled=pooled or {})


def test_every_legacy_switch_is_offered_by_the_command():
    assert set(cli_evaluate.LEGACY) == set(LEGACY_SWITCHES)
    with pytest.raises(DetganError, match="unknown legacy switch.*lhcb-2019"):
        EvaluationSettings(legacy=("lhcb-2020",))


def test_classifier_switches_float64_and_published_protocol():
    s = EvaluationSettings(legacy=("float64",))
    assert s.classifier_settings().dtype == "float64" and s.classifier_seed() == 0
    s = EvaluationSettings(legacy=("cc-classifier",), seed=5)
    cs = s.classifier_settings()
    assert cs.n_runs == 1 and cs.equal_sizes and cs.dtype == "float32"
    assert s.classifier_seed() is None  # unseeded, as published (the drawn seed is recorded)


def test_correlation_rows_reversed_under_switch():
    x = np.random.default_rng(3).normal(size=(200, 3))
    x[:, 1] += x[:, 0]
    ref, cand = _family(200), _family(200)
    ref.corr, cand.corr = x, x[::-1].copy()
    natural = _correlation(ref, cand, EvaluationSettings())
    flipped = _correlation(ref, cand, EvaluationSettings(legacy=("cc-correlation",)))
    assert natural["matrix_order"] == "natural" and np.allclose(
        np.diag(natural["matrix_reference"]), 1
    )
    assert np.allclose(flipped["matrix_reference"], np.array(natural["matrix_reference"])[::-1])
    assert np.allclose(np.fliplr(flipped["matrix_reference"]).diagonal(), 1)  # anti-diagonal
    assert flipped["mse"] == natural["mse"]


def _cc_metrics():
    sep = lambda v: {"separation": v}  # noqa: E731
    feats = {"etot_einc": sep(0.1), "e_layer_0": sep(0.2), "e_layer_1": sep(0.3)}
    feats.update({f"{k}_1": sep(0.4) for k in ("ec_eta", "ec_phi", "width_eta", "width_phi")})
    feats.update({f"{k}_{i}": sep(0.5) for k in ("sparsity", "ec_r", "width_r") for i in (0, 1)})
    pooled = {"voxel_energy": sep(1e-5), "etot_einc_at_512": sep(0.7), "etot_einc_at_256": sep(0.6)}
    prdc = {"precision": 0.7, "recall": 0.6, "density": 0.9, "coverage": 0.8}
    return {"features": feats, "pooled": pooled, "prdc": prdc}


def test_histogram_text_order_and_published_switch():
    text = _histogram_text(_cc_metrics(), published_only=False)
    names = [line[:-2] for line in text.splitlines() if line.endswith(": ")]
    assert names[:4] == ["Etot / Einc", "E layer 0", "E layer 1", "EC Eta layer 1"]
    assert names[7:10] == [
        "Etot / Einc at E = 256.0",
        "Etot / Einc at E = 512.0",
        "Voxel distribution",
    ]
    assert names[10:] == [f"{k} layer {i}" for k in ("Sparsity", "EC R", "Width R") for i in (0, 1)]
    assert "Voxel distribution: \n1e-05\n" in text
    legacy = _histogram_text(_cc_metrics(), published_only=True)
    assert legacy.rstrip().endswith("Voxel distribution: \n1e-05") and "Sparsity" not in legacy


@pytest.mark.parametrize(
    "legacy, expected",
    [((), "precision: 0.7\nrecall: 0.6\n"), (("prdc-one-line",), "precision: 0.7 recall: 0.6 ")],
)
def test_prdc_text_file(legacy, expected):
    ref = _family(4)
    ref.meta = {"dataset": "1-photons"}
    ev = types.SimpleNamespace(
        summary={
            "settings": {"legacy": list(legacy)},
            "families": {"calochallenge": {"metrics": _cc_metrics()}},
        },
        samples={"calochallenge": (ref, ref)},
    )
    files = calochallenge_text_files(ev)
    assert files["prdc_1-photons.txt"].startswith(expected)
    assert files["prdc_1-photons.txt"].count("\n") == (1 if legacy else 4)


def test_response_per_energy_bins_and_owners():
    e_inc = np.array([256.0, 300.0, 4096.0, 8000.0, 2.0**22])
    resp = np.array([1.0, 0.9, 1.01, 0.99, 0.98])
    pooled, bins = response_per_energy(resp, e_inc, "1-photons")
    assert sorted(k for k in pooled if not k.startswith("_")) == [
        "etot_einc_at_256",
        "etot_einc_at_4096",
        "etot_einc_at_4194304",
    ]
    assert pooled["etot_einc_at_256"].tolist() == [1.0, 0.9]
    assert pooled["_owner_etot_einc_at_4096"].tolist() == [2, 3]
    np.testing.assert_allclose(bins["etot_einc_at_256"], np.linspace(0.4, 1.4, 21))
    np.testing.assert_allclose(bins["etot_einc_at_4096"], np.linspace(0.9, 1.1, 21))
    _, pion_bins = response_per_energy(resp, e_inc, "1-pions")
    np.testing.assert_allclose(pion_bins["etot_einc_at_4096"], np.linspace(0.4, 1.4, 21))


def test_select_splits_pooled_arrays_by_owner():
    pooled = {"voxel_energy": np.arange(10.0), "_owner_voxel_energy": np.repeat(np.arange(5), 2)}
    half = _family(5, pooled).select(np.array([1, 3]))
    assert half.pooled["voxel_energy"].tolist() == [2.0, 3.0, 6.0, 7.0]
    assert "_owner_voxel_energy" in half.pooled
    assert _family(5, {"x": np.arange(3.0)}).select(np.array([0])).pooled == {}  # no owner


def test_fill_undefined_adds_indicators():
    xr = np.array([[1.0, np.nan], [3.0, 2.0]])
    xc = np.array([[np.nan, 1.0], [5.0, 1.0]])
    r, c = _fill_undefined(xr, xc)
    np.testing.assert_allclose(r, [[1, 2, 0, 1], [3, 2, 0, 0]])
    np.testing.assert_allclose(c, [[2, 1, 1, 0], [5, 1, 0, 0]])


def test_nn_representation_zero_cells():
    calo = _family(2)
    calo.cells = np.array([[0.0, 0.01, 100.0]])
    np.testing.assert_allclose(nn_representation(calo), [[-1.0, -2.0, 2.0]])
    foot = _family(2, family="footprint")
    assert nn_representation(foot) is not None and np.array_equal(
        nn_representation(foot), foot.cells
    )


def test_klein_width_switch_on_atlas_showers():
    """§A.4 / §B.10: legacy width = w² (std is shift-free), Back: w_Back² (E_Back/E_Middle)²."""
    showers = simulate_batch(CaloSimConfig(geometry="atlas-cluster"), 1, 0, 200)
    f = showers_family(showers).features
    g = showers_family(showers, legacy=("klein-width",)).features
    ok = np.isfinite(f["width_eta_back"]) & np.isfinite(f["width_eta_middle"])
    assert ok.sum() > 50
    np.testing.assert_allclose(
        g["width_eta_middle"][ok], f["width_eta_middle"][ok] ** 2, rtol=1e-6, atol=1e-12
    )
    expected = f["width_eta_back"] ** 2 * (f["e_back"] / f["e_middle"]) ** 2
    np.testing.assert_allclose(g["width_eta_back"][ok], expected[ok], rtol=1e-6, atol=1e-12)


@pytest.fixture(scope="module")
def lhcb_files(tmp_path_factory):
    from detgan.io.showers import save_showers

    d = tmp_path_factory.mktemp("lhcb")
    cfg = CaloSimConfig(geometry="lhcb-ecal")
    paths = {}
    for name, seed in (("ref", 1), ("cand", 2), ("train", 3)):
        paths[name] = d / f"{name}.npz"
        save_showers(simulate_batch(cfg, seed, 0, 300), paths[name], "lhcb")
    return paths


def test_evaluate_lhcb_with_train_and_legacy(lhcb_files, tmp_path, capsys):
    base = [
        "evaluate",
        "--reference",
        str(lhcb_files["ref"]),
        "--candidate",
        str(lhcb_files["cand"]),
    ]
    opts = ["--no-classifier", "--no-fpd", "--no-figures", "--cache-dir", "none", "--threads", "1"]
    assert main([*base, "-o", str(tmp_path / "a"), "--train", str(lhcb_files["train"]), *opts]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    fam = s["families"]["lhcb"]
    assert {"asym_long", "asym_trans", "width_long", "width_trans", "delta_x"} <= set(
        fam["metrics"]["features"]
    )
    memo = fam["metrics"]["memorisation"]
    assert 0.7 < memo["median_ratio"] < 1.3 and memo["n_copies"] == 0  # independent samples
    assert "memorisation" in fam["floor"] and s["inputs"]["train_sha256"]
    assert "memorisation ratio" in capsys.readouterr().out
    assert main([*base, "-o", str(tmp_path / "b"), "--legacy", "lhcb-2019", *opts]) == 0
    leg = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert leg["settings"]["legacy"] == ["lhcb-2019"]
    assert "lhcb-2019" in (tmp_path / "b" / "summary.md").read_text()
    a, b = (x["families"]["lhcb"]["metrics"]["features"] for x in (s, leg))
    assert a["width_long"]["wasserstein"] != b["width_long"]["wasserstein"]
    assert a["etot_p"]["wasserstein"] == b["etot_p"]["wasserstein"]  # unchanged by the switch
    ref = load_showers(lhcb_files["ref"])  # the table shows each sample's mean ± std
    etot_p = ref.cells.sum(1) / np.linalg.norm(ref.conditions["momentum"], axis=1)
    np.testing.assert_allclose(
        [a["etot_p"]["mean_reference"], a["etot_p"]["std_reference"]],
        [etot_p.mean(), etot_p.std()],
        rtol=1e-5,
    )
    assert a["etot_p"]["mean_candidate"] != a["etot_p"]["mean_reference"]
    md = (tmp_path / "a" / "summary.md").read_text()
    assert "| reference mean ± std | candidate mean ± std |" in md


def test_memorisation_detects_copies(lhcb_files, tmp_path):
    args = [
        "evaluate",
        "--reference",
        str(lhcb_files["ref"]),
        "--candidate",
        str(lhcb_files["train"]),
        "--train",
        str(lhcb_files["train"]),
        "-o",
        str(tmp_path / "c"),
        "--no-classifier",
        "--no-fpd",
        "--no-figures",
        "--cache-dir",
        "none",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    memo = json.loads((tmp_path / "c" / "summary.json").read_text())["families"]["lhcb"]["metrics"][
        "memorisation"
    ]
    assert memo["median_ratio"] < 1e-3 and memo["n_copies"] == 300
