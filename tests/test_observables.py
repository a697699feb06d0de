"""Observables: footprint, trace and calorimeter features on hand-built events."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detgan import observables as obs
from detgan import observables_calo as oc
from detgan.utils import DetganError


def test_station_grid_offset_layout():
    pos = obs.station_grid(9, "offset")
    assert pos[40] == pytest.approx([0, 0])
    assert pos[0] == pytest.approx([-4, -4 * math.sin(math.radians(60))])
    assert pos[1] == pytest.approx([-3.5, -3 * math.sin(math.radians(60))])
    nn = np.sort(np.linalg.norm(pos - pos[40], axis=1))[1:7]
    assert nn == pytest.approx(np.ones(6))  # six neighbours at one spacing


def test_footprint_single_station():
    f = np.zeros((2, 9, 9))
    f[0, 4, 4] = 3.0  # S = 999 VEM
    feats = obs.footprint_observables(f)
    assert feats["sum_log_signal"].tolist() == [3.0, 0.0]
    assert feats["log10_total_signal"][0] == pytest.approx(math.log10(999))
    assert np.isnan(feats["log10_total_signal"][1])
    assert feats["n_stations"].tolist() == [1.0, 0.0]
    assert feats["hottest_signal"][0] == 3.0
    assert feats["lateral_spread"][0] == pytest.approx(0.0)
    assert feats["ring_1"][0] == 0.0


def test_footprint_ring_means():
    f = np.zeros((1, 9, 9))
    f[0, 4, 4] = 4.0
    pos = obs.station_grid()
    ring1 = np.isclose(np.linalg.norm(pos - pos[40], axis=1), 1.0).reshape(9, 9)
    f[0][ring1] = 2.0
    feats = obs.footprint_observables(f)
    assert feats["ring_1"][0] == pytest.approx(2.0)
    assert feats["ring_2"][0] == 0.0
    assert feats["n_stations"][0] == 7
    assert feats["lateral_spread"][0] == pytest.approx(math.sqrt(12 / 16))


def test_trace_quantiles_flat_trace():
    t = np.zeros(80)
    t[2:6] = 1.0  # uniform over [50, 150) ns
    q = obs.trace_quantile_times(t[None], (0.1, 0.5, 0.9))[0]
    assert q == pytest.approx([60.0, 100.0, 140.0])


def test_trace_observables_hottest_station():
    tr = np.zeros((1, 9, 9, 80))
    tr[0, 4, 4, 2:6] = 10.0
    tr[0, 3, 4, 10] = 1.0
    feats = obs.trace_observables(tr)
    assert feats["n_triggered"][0] == 2
    assert feats["log10_integral"][0] == pytest.approx(math.log10(40))
    assert feats["log10_integral_total"][0] == pytest.approx(math.log10(41))
    assert feats["peak_time"][0] == pytest.approx(62.5)
    assert feats["rise_time"][0] == pytest.approx(40.0)
    assert feats["fall_time"][0] == pytest.approx(40.0)
    pooled = obs.trace_station_observables(tr)
    assert len(pooled["peak_time"]) == 2


def test_traces_nonfinite_rejected():
    tr = np.zeros((2, 9, 9, 80))
    tr[1, 0, 0, 0] = np.nan
    with pytest.raises(DetganError, match=r"NaN or inf values \(first events \[1\]\)"):
        obs.trace_observables(tr)
    with pytest.raises(DetganError, match="shape"):
        obs.footprint_observables(np.zeros((9, 9)))


def test_feature_matrix_indicator_columns():
    x, names = obs.feature_matrix({"a": np.array([1.0, 3.0]), "b": np.array([np.nan, 2.0])})
    assert names == ["a", "b", "b_undefined"]
    assert x[:, 0] == pytest.approx([-1, 1]) and x[0, 1] == 0.0 and x[:, 2].tolist() == [1, 0]


# ----------------------------------------------------------------------------- CaloChallenge

DS1_PHOTONS = (
    [
        ((0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
        ((0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, 50, 70, 90, 120, 150, 200), 10),
        ((0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200, 250, 300, 350, 400), 10),
        ((0, 50, 100, 200, 400, 600), 1),
    ]
    + [((0,), 1)] * 8
    + [((0, 100, 200, 400, 1000, 2000), 1)]
    + [((0,), 1)] * 11
)


def test_layer_table_check_values():
    """§1.1.4 check value: dataset 1-photons flat index 8 is layer 1, α = −2.827433, r = 1 mm."""
    table = oc.layer_table(DS1_PHOTONS)
    assert table[-1]["slice"].stop == 368
    lay1 = table[1]
    assert lay1["slice"].start == 8
    assert lay1["eta"][0] == pytest.approx(-0.951057, abs=1e-6)
    assert lay1["phi"][0] == pytest.approx(-0.309017, abs=1e-6)


def test_calochallenge_single_voxel_event():
    """§B.4: one voxel of energy E in layer l at (α_j, r_i)."""
    cells = np.zeros((1, 368))
    j, i = 3, 5
    cells[0, 8 + j * 16 + i] = 50.0
    f = oc.calochallenge_features(cells, np.array([100.0]), DS1_PHOTONS)
    r_c = (10 + 12) / 2
    alpha = -np.pi + (j + 0.5) * 2 * np.pi / 10
    assert f["e_layer_1"][0] == 50.0 and f["etot_einc"][0] == 0.5
    assert f["ec_eta_1"][0] == pytest.approx(r_c * np.cos(alpha))
    assert f["ec_phi_1"][0] == pytest.approx(r_c * np.sin(alpha))
    assert f["width_eta_1"][0] == pytest.approx(0, abs=1e-6) and f["width_r_1"][0] == pytest.approx(
        0, abs=1e-6
    )
    assert f["ec_r_1"][0] == pytest.approx(r_c)
    assert f["sparsity_1"][0] == pytest.approx(1 - 1 / 160)
    assert f["ec_eta_2"][0] == 0.0 and f["width_phi_2"][0] == 0.0  # empty layer → 0 via ε
    assert "e_layer_4" not in f and "ec_eta_0" not in f


def test_threshold_keeps_e_min():
    x = oc.apply_threshold(np.array([[0.999, 1.0, -3.0, 2.0]]), 1.0)
    assert x.tolist() == [[0.0, 1.0, 0.0, 2.0]]


def test_cls_vectors_lengths_and_order():
    rng = np.random.default_rng(0)
    cells = rng.exponential(5.0, size=(4, 368))
    e_inc = np.full(4, 2000.0)
    f = oc.calochallenge_features(cells, e_inc, DS1_PHOTONS)
    high = oc.calochallenge_cls_high(f, e_inc, DS1_PHOTONS)
    assert high.shape == (4, 30)  # §2.1 table: 1-photons cls-high length 30
    assert high[:, 0] == pytest.approx(np.log10(2000.0))
    assert high[:, 1] == pytest.approx(np.log10(f["e_layer_0"] + 1e-8))
    assert high[:, 6] == pytest.approx(f["ec_eta_1"] / 100)
    assert high[:, 14] == pytest.approx(np.log10(f["etot"] + 1e-8))
    assert oc.calochallenge_cls_low(cells, e_inc).shape == (4, 369)


def test_published_bins():
    assert oc.calochallenge_bins("etot_einc", "2", 0.015)[[0, -1]].tolist() == [0.5, 1.5]
    assert oc.calochallenge_bins("ec_eta_12", "1-photons", 1.0)[0] == -500
    assert oc.calochallenge_bins("ec_eta_1", "1-photons", 1.0)[-1] == 100
    assert oc.calochallenge_bins("width_r_3", "2", 0.015)[-1] == 20
    e = oc.calochallenge_bins("e_layer_1", "2", 0.5, np.array([0.1, 50.0]))
    assert len(e) == 40 and e[0] == pytest.approx(0.5) and e[-1] == pytest.approx(50.0)
    assert oc.calochallenge_bins("e_layer_1", "2", 0.5, np.array([0.1])) is None


def test_calogan_features_known_event():
    l0, l1, l2 = np.zeros((1, 3, 96)), np.zeros((1, 12, 12)), np.zeros((1, 12, 6))
    l0[0, 1, 10] = 10.0
    l1[0, 5, 5], l1[0, 6, 5] = 30.0, 10.0
    f = oc.calogan_features([l0, l1, l2])
    assert f["e_tot"][0] == 50.0 and f["frac_1"][0] == pytest.approx(0.8)
    assert f["shower_depth"][0] == pytest.approx(40 / 50)
    assert f["max_depth"][0] == 1.0
    assert f["e_ratio_1"][0] == pytest.approx(20 / 40)
    # rows 5 and 6 at x = −20 and +20 mm, weights 3:1 → mean −10, std sqrt(300)
    assert f["lateral_width_1"][0] == pytest.approx(math.sqrt(300), rel=1e-6)
    assert f["occupancy_1"][0] == pytest.approx(2 / 144)
    assert np.isnan(oc.calogan_features([l0 * 0, l1 * 0, l2])["shower_depth"][0])


def test_atlas_widths_and_legacy():
    cells = np.zeros((1, 89))
    cells[0, 9], cells[0, 11] = 1000.0, 1000.0  # middle, Δφ = ∓0.025
    cells[0, 75], cells[0, 76] = 500.0, 500.0  # back
    eta = np.zeros(89)
    phi = np.zeros(89)
    phi[9], phi[11] = -0.025, 0.025
    phi[75], phi[76] = -0.05, 0.05
    f = oc.atlas_features(cells, eta, phi)
    assert f["width_phi_middle"][0] == pytest.approx(0.025)
    assert f["width_phi_back"][0] == pytest.approx(0.05)
    assert f["r_mid"][0] == pytest.approx(1.0)
    assert np.isnan(f["width_eta_strip"][0])
    leg = oc.atlas_features(cells, eta, phi, legacy=True)
    assert leg["width_phi_back"][0] == pytest.approx(0.05**2 * (1000 / 2000) ** 2)


def test_atlas_thresholds():
    cells = np.full((1, 89), 150.0)
    x = oc.atlas_threshold(cells)
    assert x[0, 0] == 0.0 and x[0, 21] == 150.0 and x[0, 69] == 150.0 and x[0, 75] == 0.0
