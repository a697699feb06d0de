"""Physics checks of the parameterised e.m. shower simulation (calorimeter.md §4)."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from scipy.special import gammainc

from detgan.io.showers import load_showers
from detgan.sim import geometry as geometry_module
from detgan.sim.calo_media import MEDIA
from detgan.sim.calorimeter import (
    PHOTON_T0_MEAN,
    CaloSimConfig,
    mean_longitudinal,
    n_spots,
    sample_longitudinal,
    simulate,
    simulate_batch,
    simulate_to_file,
)
from detgan.sim.geometry import BinningLayer, CaloChallengeBinning, CaloGeometry
from detgan.utils import DetganError

PB = MEDIA["pb-lar"]
LAYER_X0 = 0.25
N_LAYERS = 120
R_STEP = 0.1  # R_M


@pytest.fixture
def fine(monkeypatch):
    """A deep, wide test calorimeter: 120 layers of 0.25 X0, radial bins of 0.1 R_M to 10 R_M."""
    edges = tuple(round(k * R_STEP * PB.rm, 6) for k in range(101))
    binning = CaloChallengeBinning(
        "electron", 11, tuple(BinningLayer(k, edges, 1) for k in range(N_LAYERS)), "fine"
    )
    depths = tuple((k * LAYER_X0, (k + 1) * LAYER_X0) for k in range(N_LAYERS))
    geo = CaloGeometry(
        "fine",
        binning,
        PB,
        depths,
        (0.0,) * N_LAYERS,
        (0.0,) * N_LAYERS,
        "electron",
        "uniform",
        (1000.0, 100_000.0),
        "calochallenge",
    )
    monkeypatch.setitem(geometry_module.GEOMETRIES, "fine", geo)
    return geo


def _deposits(particle: str, energy: float, n: int, seed: int) -> np.ndarray:
    """(n, layers, radial bins) deposits in the fine calorimeter."""
    cfg = CaloSimConfig(geometry="fine", particle=particle, energy=energy, batch_size=500)
    return simulate(cfg, n, seed).cells.reshape(n, N_LAYERS, -1)


def _expected_profile(energy: float, t0: np.ndarray | None, rng) -> np.ndarray:
    """Mean fraction of energy per layer: the Gamma profile averaged over sampled (T, α, t0)."""
    t_max, alpha = sample_longitudinal(np.full(20_000, energy), PB, rng)
    beta = (alpha - 1) / t_max
    edges = np.arange(N_LAYERS + 1) * LAYER_X0
    shift = np.zeros(len(alpha)) if t0 is None else t0
    x = np.clip(edges[None, :] - shift[:, None], 0, None) * beta[:, None]
    return np.diff(gammainc(alpha[:, None], x), axis=1).mean(axis=0)


def test_gp_parameters_match_the_formulas():
    m = mean_longitudinal(np.array([10_000.0]), PB)
    ln_y = math.log(1000.0)
    assert m["mean_ln_t"][0] == pytest.approx(math.log(ln_y - 0.812))
    assert m["sigma_ln_alpha"][0] == pytest.approx(1 / (-0.58 + 0.86 * ln_y))
    assert m["rho"][0] == pytest.approx(0.705 - 0.023 * ln_y)
    assert n_spots(np.array([10_000.0]), PB, 10**6)[0] == round(93 * math.log(82) * 10**0.876)
    assert n_spots(np.array([4e6]), PB, 5000)[0] == 5000  # capped at TeV energies


def test_sampled_parameters_have_the_stated_moments():
    energy = np.full(40_000, 50_000.0)
    t_max, alpha = sample_longitudinal(energy, PB, np.random.default_rng(1))
    m = mean_longitudinal(energy[:1], PB)
    assert np.log(t_max).mean() == pytest.approx(m["mean_ln_t"][0], abs=0.01)
    assert np.log(t_max).std() == pytest.approx(m["sigma_ln_t"][0], rel=0.03)
    assert np.corrcoef(np.log(t_max), np.log(alpha))[0, 1] == pytest.approx(m["rho"][0], abs=0.02)


def test_mean_longitudinal_profile_is_the_gamma_profile(fine):
    deposits = _deposits("electron", 10_000.0, 600, seed=3)
    profile = deposits.sum(axis=2).mean(axis=0) / 10_000.0
    expected = _expected_profile(10_000.0, None, np.random.default_rng(5))
    assert np.abs(profile - expected).max() < 0.1 * expected.max()
    depth = (np.arange(N_LAYERS) + 0.5) * LAYER_X0
    peak = depth[np.argmax(np.convolve(profile, np.ones(5) / 5, "same"))]
    t_mean = math.exp(mean_longitudinal(np.array([10_000.0]), PB)["mean_ln_t"][0])
    assert abs(peak - t_mean) < 0.2 + LAYER_X0 / 2


def test_photons_start_later_by_the_conversion_depth(fine):
    e = 10_000.0
    depth = (np.arange(N_LAYERS) + 0.5) * LAYER_X0
    mean_depth = {}
    for particle in ("electron", "photon"):
        profile = _deposits(particle, e, 600, seed=4).sum(axis=2).mean(axis=0)
        mean_depth[particle] = (profile * depth).sum() / profile.sum()
        if particle == "photon":
            rng = np.random.default_rng(6)
            expected = _expected_profile(e, rng.exponential(PHOTON_T0_MEAN, 20_000), rng)
            smooth = np.convolve(profile / e, np.ones(5) / 5, "same")
            assert abs(depth[np.argmax(smooth)] - depth[np.argmax(expected)]) < 0.2 + LAYER_X0
            assert np.abs(profile / e - expected).max() < 0.1 * expected.max()
    assert mean_depth["photon"] - mean_depth["electron"] == pytest.approx(PHOTON_T0_MEAN, abs=0.15)


def test_lateral_containment_and_spread(fine):
    deposits = _deposits("electron", 10_000.0, 400, seed=7)
    radial = deposits.sum(axis=(0, 1))
    contained = np.cumsum(radial) / radial.sum()  # within (k + 1) * 0.1 R_M
    assert 0.86 < contained[9] < 0.94  # ≈ 90 % within 1 R_M
    assert 0.94 < contained[19] < 0.98  # ≈ 95 % within 2 R_M
    r = (np.arange(100) + 0.5) * R_STEP
    per_layer = deposits.sum(axis=0)
    mean_r = (per_layer * r).sum(axis=1) / np.maximum(per_layer.sum(axis=1), 1e-9)
    assert (
        mean_r[4 * 16 : 4 * 20].mean() > 2 * mean_r[4 * 2 : 4 * 4].mean()
    )  # tails widen with depth


def test_response_is_linear_and_resolution_scales_with_sqrt_e(fine):
    rel = {}
    for energy in (2_000.0, 20_000.0):
        totals = _deposits("electron", energy, 800, seed=8).sum(axis=(1, 2))
        assert totals.mean() / energy == pytest.approx(0.99, abs=0.015)  # ~1 % leaks out
        rel[energy] = totals.std() / totals.mean()
        assert rel[energy] == pytest.approx(PB.sampling / math.sqrt(energy / 1000), rel=0.15)
    assert rel[2_000.0] / rel[20_000.0] == pytest.approx(math.sqrt(10), rel=0.2)


def test_inclined_lhcb_showers_are_elongated_and_follow_the_impact_point():
    showers = simulate(CaloSimConfig(geometry="lhcb-ecal", batch_size=250), 500, seed=9)
    images = showers.images()["ecal"].astype(np.float64)
    x, y = showers.layout.layers[0].centres()
    e = images.sum(axis=(1, 2))
    cx = (images.sum(axis=2) * x).sum(axis=1) / e
    cy = (images.sum(axis=1) * y).sum(axis=1) / e
    point, p = showers.conditions["point"], showers.conditions["momentum"]
    design = np.column_stack([np.ones(len(e)), point[:, 0], p[:, 0] / p[:, 2]])
    coef = np.linalg.lstsq(design, cx, rcond=None)[0]
    assert coef[1] == pytest.approx(1.0, abs=0.05)  # the centre moves with the impact point
    assert 60 < coef[2] < 300  # and with the direction (lever arm ≈ shower depth, mm)
    design_y = np.column_stack([np.ones(len(e)), point[:, 1], p[:, 1] / p[:, 2]])
    coef_y = np.linalg.lstsq(design_y, cy, rcond=None)[0]
    assert coef_y[1] == pytest.approx(1.0, abs=0.05)
    assert coef_y[2] == pytest.approx(coef[2], rel=0.2)
    # second moments along and across the projected direction, for clearly inclined showers
    d = p[:, :2] / np.linalg.norm(p[:, :2], axis=1, keepdims=True)
    dx, dy = x[None, :, None] - cx[:, None, None], y[None, None, :] - cy[:, None, None]
    along = ((dx * d[:, 0, None, None] + dy * d[:, 1, None, None]) ** 2 * images).sum((1, 2)) / e
    across = ((dx * d[:, 1, None, None] - dy * d[:, 0, None, None]) ** 2 * images).sum((1, 2)) / e
    tilted = np.linalg.norm(p[:, :2], axis=1) / p[:, 2] > math.tan(math.radians(15))
    assert tilted.sum() > 50
    assert np.median(along[tilted] / across[tilted]) > 1.3


def test_reproducible_by_seed_and_batches_independent():
    cfg = CaloSimConfig(geometry="atlas-cluster", batch_size=50)
    a, b = simulate(cfg, 120, seed=11), simulate(cfg, 120, seed=11)
    np.testing.assert_array_equal(a.cells, b.cells)
    np.testing.assert_array_equal(a.conditions["cell_phi"], b.conditions["cell_phi"])
    assert not np.array_equal(a.cells, simulate(cfg, 120, seed=12).cells)
    third = simulate_batch(cfg, 11, 2, 20)  # batch 2 alone equals events 100..119
    np.testing.assert_array_equal(third.cells, a.cells[100:])


def test_thresholds_noise_and_conditions_of_the_geometries():
    atlas = simulate(CaloSimConfig(geometry="atlas-cluster", batch_size=100), 100, seed=2)
    thresholds = np.repeat([200.0, 60.0, 120.0, 200.0], [21, 48, 6, 14])
    assert np.all((atlas.cells == 0) | (atlas.cells >= thresholds))
    assert (atlas.cells > 0).sum(axis=1).min() > 5
    assert np.all((atlas.energy >= 10_000) & (atlas.energy <= 300_000))
    phi = atlas.conditions["cell_phi"]
    assert np.all((phi > -np.pi) & (phi <= np.pi))
    dphi = np.angle(np.exp(1j * (phi - phi[:, 10:11])))
    np.testing.assert_allclose(dphi[:, 9], -0.025, atol=1e-5)  # (i_η, j_φ) = (1, 2)
    deta = atlas.conditions["cell_eta"] - atlas.conditions["cell_eta"][:, 10:11]
    np.testing.assert_allclose(deta[:, 3], -0.025, atol=1e-5)  # (0, 3)
    ds1 = simulate(CaloSimConfig(geometry="calochallenge-1-photons", batch_size=200), 200, seed=2)
    assert np.all((ds1.cells == 0) | (ds1.cells >= 1.0))
    assert set(np.unique(ds1.energy)) <= {2.0**k for k in range(8, 23)}
    calogan = simulate(CaloSimConfig(geometry="calogan"), 50, seed=2)
    total = calogan.cells.sum(axis=1) + calogan.conditions["overflow"].sum(axis=1)
    assert np.all(total <= calogan.energy * 1.5) and np.all(calogan.cells >= 0)


def test_config_errors_are_one_line():
    with pytest.raises(DetganError) as err:
        CaloSimConfig(geometry="atlas-cluster", energy=50.0)
    assert str(err.value) == ("energy=50 MeV is below the parameterisation's range; use >= 100 MeV")
    with pytest.raises(DetganError, match=r"^unknown particle 'muon'; choose default, photon"):
        CaloSimConfig(particle="muon")
    with pytest.raises(DetganError, match=r"^unknown setting\(s\) spots for CaloSimConfig"):
        CaloSimConfig.from_dict({"spots": 3})


def test_file_streaming_has_bounded_memory_and_matches_memory(tmp_path):
    cfg = CaloSimConfig(geometry="calochallenge-2", batch_size=100, energy=5_000.0)
    peaks = []
    for n in (200, 1000):
        tracemalloc.start()
        simulate_to_file(cfg, n, 3, tmp_path / f"ds2-{n}.h5")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0]  # five times the events, no more memory
    stored = load_showers(tmp_path / "ds2-200.h5")
    np.testing.assert_array_equal(stored.cells, simulate(cfg, 200, 3).cells)
    simulate_to_file(cfg, 200, 3, tmp_path / "two-workers.h5", workers=2)
    np.testing.assert_array_equal(load_showers(tmp_path / "two-workers.h5").cells, stored.cells)
    assert stored.meta["attrs"]["seed"] == 3
    assert CaloSimConfig.from_json(stored.meta["attrs"]["config_json"]) == cfg


@pytest.mark.slow
def test_speed_target_on_two_cores():
    """calorimeter.md §4: >= 2·10³ showers/s for calochallenge-1-photons at 10 GeV on 2 cores.

    Measured as CPU time of one single-threaded process (robust on a shared machine): 10³
    showers per CPU-second per core suffice, as workers scale linearly (benchmarks/results.md).
    """
    import time

    cfg = CaloSimConfig(geometry="calochallenge-1-photons", energy=10_000.0, batch_size=1000)
    simulate_batch(cfg, 0, 0, 100)  # warm-up
    start = time.process_time()
    for batch in range(3):
        simulate_batch(cfg, 1, batch, 1000)
    assert 3000 / (time.process_time() - start) > 1000


def test_extreme_spots_stay_finite_and_land_in_overflow():
    from detgan.sim.calorimeter import lateral_parameters
    from detgan.sim.geometry import SpotBinner, get_geometry

    params = lateral_parameters(
        np.array([1e4, 0.0], np.float32), np.array([8.3, -1.4], np.float32), 82.0
    )
    assert all(np.isfinite(p).all() for p in params)
    binner = SpotBinner(get_geometry("calochallenge-1-photons"))
    far = np.array([np.float32(3e38), 1e9], np.float32)
    slots = binner.bin_polar(far, np.zeros(2, np.float32), np.full(2, 3.0, np.float32))
    assert slots.tolist() == [368 + 1, 368 + 1]  # overflow of layer 1
    grid = SpotBinner(get_geometry("atlas-cluster"))
    assert grid.bin_xy(far, -far, np.full(2, 10.0, np.float32)).tolist() == [89, 89]
