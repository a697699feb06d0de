"""LHCb ECAL cluster metrics (formats spec §2.3, §A.3, §B.9) on hand-built events."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detgan.observables_lhcb import (
    LHCB_ALPHAS,
    expected_centre,
    lhcb_cluster_metrics,
    lhcb_cluster_metrics_legacy,
    lhcb_physics_vector,
    relative_occupancy,
)
from detgan.utils import DetganError

_C = np.arange(30) - 14.5
_X, _Y = np.meshgrid(_C, _C, indexing="ij")  # first image axis = x
ANGLES = (0.3, 1.0, 2.2, -0.7, -2.6)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _blob(centre, angle, along=4.0, across=1.5, shift=0.0):
    """Elongated 2-D Gaussian along u = (cos, sin), centred at centre + shift·u."""
    u = np.array([math.cos(angle), math.sin(angle)])
    dx, dy = _X - centre[0], _Y - centre[1]
    s = dx * u[0] + dy * u[1] - shift
    t = -dx * u[1] + dy * u[0]
    return np.exp(-(s**2) / (2 * along**2) - t**2 / (2 * across**2))


def _event(angle, shift=0.0, centre=(0.3, -0.2)):
    """One image with P = centre (pitch 1, z_sm = 0) and momentum along the angle."""
    mom = np.array([[math.cos(angle), math.sin(angle), 10.0]])
    return _blob(centre, angle, shift=shift)[None], np.array([centre]), mom


@pytest.mark.parametrize("angle", ANGLES)
def test_gaussian_widths_and_zero_asymmetry(angle):
    img, pt, mom = _event(angle)
    m = lhcb_cluster_metrics(img, pt, mom, pitch=1.0, z_sm=0.0)
    assert m["width_long"][0] == pytest.approx(4.0, rel=0.05)
    assert m["width_trans"][0] == pytest.approx(1.5, rel=0.05)
    assert abs(m["asym_long"][0]) < 0.05 and abs(m["asym_trans"][0]) < 0.05
    assert abs(m["delta_x"][0]) < 1e-2 and abs(m["delta_y"][0]) < 1e-2


@pytest.mark.parametrize("angle", ANGLES)
def test_forward_shift_gives_known_asymmetry(angle):
    img, pt, mom = _event(angle, shift=2.0)
    a_l = lhcb_cluster_metrics(img, pt, mom, pitch=1.0, z_sm=0.0)["asym_long"][0]
    expected = math.erf(0.5 / math.sqrt(2))  # 2Φ(0.5) − 1 ≈ 0.383
    assert a_l == pytest.approx(expected, abs=0.03)


def test_energy_left_of_trajectory_gives_plus_one():
    mom = np.array([[1.0, 0.5, 10.0]])
    img = np.zeros((1, 30, 30))
    t = -_X * 0.5 + _Y * 1.0  # ∝ (r − P)·n with P = 0
    img[0][t > 0.3] = 1.0
    m = lhcb_cluster_metrics(img, np.zeros((1, 3)), mom, pitch=1.0, z_sm=0.0)
    assert m["asym_trans"][0] == pytest.approx(1.0)


def test_transpose_is_a_reflection(rng):
    n = 20
    img = rng.exponential(1.0, (n, 30, 30)) * (rng.random((n, 30, 30)) < 0.3)
    pt, mom = rng.normal(0, 1.5, (n, 3)), np.c_[rng.normal(0, 1, (n, 2)), np.full(n, 20.0)]
    a = lhcb_cluster_metrics(img, pt, mom)
    b = lhcb_cluster_metrics(img.transpose(0, 2, 1), pt[:, [1, 0, 2]], mom[:, [1, 0, 2]])
    for key in ("asym_long", "width_long", "width_trans", "occupancy_rel", "etot_p"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-12)
    np.testing.assert_allclose(a["asym_trans"], -b["asym_trans"], atol=1e-12)
    np.testing.assert_allclose(a["delta_x"], b["delta_y"], atol=1e-12)
    np.testing.assert_allclose(a["delta_y"], b["delta_x"], atol=1e-12)


def test_expected_centre_units():
    # x0 = 2.02 cm, p_x/p_z = 0.0808 → X = (2.02 + 25·0.0808)/2.02 = 2 cells
    c = expected_centre(np.array([[2.02, 0.0, 0.0]]), np.array([[0.808, 0.0, 10.0]]))
    np.testing.assert_allclose(c, [[2.0, 0.0]])


def test_relative_occupancy_known_values():
    img = np.zeros((2, 30, 30))
    img[0, 0, :10] = 1.0  # ten equal cells: each holds 0.1 of E_tot
    img[0, 5, 5] = 90.0  # one hot cell with 0.9 of E_tot
    s = relative_occupancy(img, np.array([1e-5, 0.05, 0.5, 1.0]))
    np.testing.assert_allclose(s[0] * 900, [11, 1, 1, 0])
    np.testing.assert_allclose(s[1], [1, 1, 1, 1])  # empty event: E = 0 ≥ α·0 everywhere
    assert len(LHCB_ALPHAS) == 50 and LHCB_ALPHAS[0] == pytest.approx(1e-5)
    assert LHCB_ALPHAS[-1] == pytest.approx(1.0)


def test_physics_vector_and_undefined_values():
    img = np.zeros((2, 30, 30))
    img[1, 14, 14] = 5.0
    mom = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # normal incidence
    m = lhcb_cluster_metrics(img, np.zeros((2, 3)), mom)
    assert np.isnan(m["asym_long"][0]) and np.isnan(m["width_long"][0])
    assert m["normal_incidence"].tolist() == [1.0, 1.0]
    assert lhcb_physics_vector(m).shape == (2, 54)
    with pytest.raises(DetganError, match=r"expected \(N, 30, 30\)"):
        lhcb_cluster_metrics(np.zeros((2, 30, 29)), np.zeros((2, 3)), mom)
    with pytest.raises(DetganError, match="p_z = 0"):
        lhcb_cluster_metrics(img, np.zeros((2, 3)), np.zeros((2, 3)))


def test_legacy_relations_on_events_without_ties(rng):
    """§A.3: A_L(project, E) = A_L(legacy, Eᵀ), A_T(project, E) = sign(p_x) A_T(legacy, Eᵀ)."""
    n = 40
    img = rng.exponential(1.0, (n, 30, 30))
    pt = np.c_[rng.uniform(-3, 3, (n, 2)) + 0.0123, np.zeros(n)]
    mom = np.c_[rng.normal(0, 1, (n, 2)), np.full(n, 10.0)]
    proj = lhcb_cluster_metrics(img, pt, mom, pitch=1.0)
    leg = lhcb_cluster_metrics_legacy(img.transpose(0, 2, 1), pt, mom)
    np.testing.assert_allclose(proj["asym_long"], leg["asym_long"], atol=1e-12)
    signed = np.sign(mom[:, 0]) * leg["asym_trans"]
    np.testing.assert_allclose(proj["asym_trans"], signed, atol=1e-12)
    np.testing.assert_allclose(proj["occupancy_rel"], leg["occupancy_rel"])
    assert np.all(np.isfinite(leg["width_long"])) and np.all(leg["width_long"] >= 0)


def _legacy_loops(img, x0, y0, px, py):
    """§A.3 written cell by cell, as an independent check of the vectorised version."""
    k = math.sqrt(1 + (py / px) ** 2)

    def width(inside):
        w, c = [], []
        for a in range(30):
            for b in range(30):
                nbrs = [(a, b + 1), (a + 1, b)]
                if any(i < 30 and j < 30 and inside(i, j) != inside(a, b) for i, j in nbrs):
                    w.append(img[a, b])
                    c.append(k * (b - 14.5))
        w, c = np.array(w), np.array(c)
        mean = (w * c).sum() / w.sum()
        return math.sqrt((w * c * c).sum() / w.sum() - mean**2)

    sp = 1.0 if py < 0 else -1.0
    h_l = lambda a, b: sp * ((a - 14.5) - y0 - ((b - 14.5) - x0) * px / py) >= 0  # noqa: E731
    h_t = lambda a, b: (a - 14.5) - y0 + ((b - 14.5) - x0) * py / px >= 0  # noqa: E731
    return width(h_l), width(h_t)


@pytest.mark.parametrize("px, py", [(1.0, 0.7), (-0.4, 1.3), (0.9, -0.2), (-1.0, -1.0)])
def test_legacy_widths_match_cell_by_cell_definition(rng, px, py):
    img = rng.exponential(1.0, (30, 30))
    pt, mom = np.array([[0.37, -1.21, 0.0]]), np.array([[px, py, 10.0]])
    leg = lhcb_cluster_metrics_legacy(img[None], pt, mom, z_sm=0.0)
    s_l, s_t = _legacy_loops(img, 0.37, -1.21, px, py)
    assert leg["width_long"][0] == pytest.approx(s_l, rel=1e-10)
    assert leg["width_trans"][0] == pytest.approx(s_t, rel=1e-10)


def test_legacy_widths_and_division_by_zero():
    # p_y = 0: the published code divides by zero → undefined (NaN), never a crash
    img = np.ones((1, 30, 30))
    leg = lhcb_cluster_metrics_legacy(img, np.zeros((1, 3)), np.array([[1.0, 0.0, 5.0]]))
    assert np.isnan(leg["asym_long"][0]) and np.isnan(leg["width_trans"][0])
    # p_x = p_y: k = √2; lines of slope ±1 through P = (0.1, 0.2) on a flat image
    pt, mom = np.array([[0.1, 0.2, 0.0]]), np.array([[1.0, 1.0, 5.0]])
    leg = lhcb_cluster_metrics_legacy(img, pt, mom)
    assert leg["width_long"][0] > 0 and np.isfinite(leg["width_trans"][0])
    # the width is the std of k·u_b over marked cells: at most k·(range of u_b)/2
    assert leg["width_long"][0] <= math.sqrt(2) * 14.5 + 1e-9
