"""Physics tests of the air-shower simulator against the validation targets of airshower.md §19."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtr

from detgan.sim.airshower import (
    amplitudes,
    bin_delays,
    make_config,
    sample_events,
    simulate,
    station_positions,
    time_medians,
)
from detgan.sim.atmosphere import (
    height_at_depth,
    sample_xmax,
    slant_depth,
    vertical_depth,
    xmax_moments,
)
from detgan.utils import DetganError

# --- §19.1 deterministic checks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "depth"),
    [(0, 1033.805), (1400, 872.293), (1600, 851.094), (5000, 551.087), (10000, 269.557)],
)
def test_vertical_depth_check_values(h, depth):
    assert vertical_depth(h) == pytest.approx(depth, abs=1e-3)


def test_slant_depth_and_inverse_check_values():
    assert slant_depth(1400, math.cos(math.radians(60))) == pytest.approx(1744.586, abs=1e-3)
    assert height_at_depth(750, 1.0) == pytest.approx(2616.05, abs=0.01)
    assert height_at_depth(600, 1.0) == pytest.approx(4356.27, abs=0.01)
    assert height_at_depth(750, math.cos(math.radians(45))) == pytest.approx(5286.87, abs=0.01)
    assert height_at_depth(0.0) == pytest.approx(112829.2, abs=0.1)


def test_height_inverts_depth_in_every_layer():
    h = np.array([-500, 100, 6999, 7001, 9000, 20000, 50000, 105000.0])
    assert np.allclose(height_at_depth(vertical_depth(h)), h, atol=1e-4)


@pytest.mark.parametrize(
    ("energy", "mean", "std"), [(1, 752.45, 62.56), (10, 808.17, 59.10), (100, 862.62, 56.10)]
)
def test_xmax_moments_for_protons(energy, mean, std):
    m, s = xmax_moments(math.log10(energy) + 18)
    assert m == pytest.approx(mean, abs=0.01)
    assert s == pytest.approx(std, abs=0.01)


def test_sampled_xmax_reproduces_mean_within_three_standard_errors():
    rng = np.random.default_rng(5)
    for lg_e in (18.0, 19.0, 20.0):
        x = sample_xmax(rng, np.full(100_000, lg_e))
        mean, std = xmax_moments(lg_e)
        assert abs(x.mean() - mean) < 3 * std / math.sqrt(x.size)
        assert x.std() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize(
    ("r", "dx", "s_mu", "s_em"),
    [(1000, 300, 241.91, 405.97), (1500, 500, 34.185, 27.899), (500, 300, 6287.7, 27847)],
)
def test_worked_amplitude_example(r, dx, s_mu, s_em):
    mu, em = amplitudes(make_config("reconstruction", "data"), 10.0, np.array(r), np.array(dx))
    assert mu == pytest.approx(s_mu, rel=5e-5)
    assert em == pytest.approx(s_em, rel=5e-5)


def test_amplitude_cap_rescales_both_components():
    cfg = make_config("paper", "data")
    mu, em = amplitudes(cfg, 100.0, np.array(10.0), np.array(50.0))
    assert mu + em == pytest.approx(1e7)
    mu0, em0 = amplitudes(cfg.replace(signal_cap=1e12), 100.0, np.array(10.0), np.array(50.0))
    assert mu / em == pytest.approx(mu0 / em0)


def test_time_medians_check_values():
    m_mu, m_em, delta = time_medians(make_config(), np.array(1000.0), np.array(300.0))
    assert (m_mu, m_em, delta) == pytest.approx((246.87, 370.21, 82.23), abs=0.01)


def test_station_positions_check_values():
    pos = station_positions(make_config())
    assert pos.shape == (81, 3)
    assert pos[0, :2] == pytest.approx((-6000, -5196.15), abs=0.01)
    assert pos[1, :2] == pytest.approx((-5250, -3897.11), abs=0.01)
    assert pos[9, :2] == pytest.approx((-4500, -5196.15), abs=0.01)
    assert pos[40, :2] == pytest.approx((0, 0), abs=1e-9)
    assert np.all(pos[:, 2] == 1400)


def test_zenith_distribution_moments():
    ev = sample_events(make_config("reconstruction"), np.random.default_rng(1), 200_000)
    theta = np.degrees(np.arccos(ev["axis"][:, 2]))
    assert theta.mean() == pytest.approx(36.54, abs=0.1)
    assert np.median(theta) == pytest.approx(37.76, abs=0.15)
    assert np.mean(ev["axis"][:, 2] ** 2) == pytest.approx(0.625, abs=0.002)
    core_r = np.hypot(ev["core"][:, 0], ev["core"][:, 1])
    assert core_r.max() <= 750 and np.mean(core_r**2) == pytest.approx(750**2 / 2, rel=0.01)


def test_gumbel_xmax_events_respect_the_acceptance_condition():
    ev = sample_events(make_config("reconstruction"), np.random.default_rng(2), 50_000)
    assert np.all(ev["xmax"] < 851.094 / ev["axis"][:, 2])


# --- binning ---------------------------------------------------------------------------------


def _analytic_bin_probabilities(shift, median, sigma=0.7, n_bins=80, width=25.0):
    edges = width * np.arange(n_bins + 1)
    lag = np.maximum(edges - shift, 0)
    with np.errstate(divide="ignore"):
        cdf = ndtr((np.log(lag) - math.log(median)) / sigma)
    return np.diff(cdf)


@pytest.mark.parametrize("count", [7, 64, 65, 5000])
def test_both_binning_paths_follow_the_log_normal(count):
    """Per-particle (N ≤ 64) and multinomial (N > 64) binning have the analytic bin means."""
    rows = 4000
    rng = np.random.default_rng(count)
    shift, median = 60.0, 300.0
    h = bin_delays(
        rng, np.full(rows, count), np.full(rows, shift), np.full(rows, median), 0.7, 80, 25.0
    )
    p = _analytic_bin_probabilities(shift, median)
    mean = h.mean(axis=0) / count
    err = np.sqrt(p * (1 - p) / (count * rows)) + 1e-9
    assert np.all(np.abs(mean - p) < 5 * err)
    assert h[:, :2].sum() == 0  # nothing before the shift (bins end at 25 and 50 ns < 60 ns)


# --- §19.2 and §19.3 statistics --------------------------------------------------------------

# per log10(E) bin: S_rec mean, sd, median; S_true mean, sd; N_trig mean, sd;
# muon frac mean, sd; Xmax mean, sd; number of reference events (airshower.md §19.2)
TABLE_19_2 = [
    (4.24, 1.02, 3.84, 4.20, 1.05, 3.70, 0.97, 0.179, 0.081, 756, 61, 352),
    (4.48, 1.06, 4.14, 4.46, 1.08, 4.57, 1.02, 0.175, 0.080, 771, 58, 402),
    (4.73, 1.03, 4.43, 4.71, 1.05, 5.53, 1.32, 0.175, 0.080, 782, 56, 414),
    (4.82, 0.90, 4.54, 4.81, 0.90, 6.85, 1.64, 0.182, 0.075, 800, 55, 362),
    (5.14, 0.85, 4.92, 5.13, 0.85, 8.63, 1.71, 0.175, 0.072, 813, 50, 371),
    (5.42, 0.87, 5.22, 5.41, 0.88, 10.32, 2.16, 0.168, 0.077, 823, 49, 370),
    (5.71, 0.87, 5.53, 5.70, 0.87, 12.97, 2.62, 0.163, 0.080, 837, 51, 354),
    (5.79, 0.72, 5.60, 5.78, 0.72, 15.58, 3.10, 0.170, 0.069, 850, 47, 375),
]


def _pulls(values, table_mean, table_sd, n_ref, sel_list):
    out = []
    for sel, m, s, nr in zip(sel_list, table_mean, table_sd, n_ref):
        x = values[sel]
        x = x[np.isfinite(x)]
        out.append((x.mean() - m) / math.sqrt(s**2 / nr + s**2 / x.size))
    return np.array(out)


def _assert_agreement(pulls, what):
    """airshower.md §19.4: no pull beyond 4, at most one beyond 3, no coherent 2σ shift."""
    assert np.all(np.abs(pulls) < 4), f"{what}: {np.round(pulls, 1)}"
    assert np.sum(np.abs(pulls) > 3) <= 1, f"{what}: {np.round(pulls, 1)}"
    assert np.sum(pulls > 2) < 3 and np.sum(pulls < -2) < 3, f"{what}: {np.round(pulls, 1)}"


@pytest.fixture(scope="module")
def reconstruction_sample():
    cfg = make_config("reconstruction", "data", store_components=True)
    return simulate(cfg, 8000, seed=11)


def test_event_statistics_versus_energy(reconstruction_sample):
    a = reconstruction_sample
    lg = a["log10_energy"]
    sels = [(lg >= 18 + 0.25 * i) & (lg < 18.25 + 0.25 * i) for i in range(8)]
    t = np.array(TABLE_19_2)
    log_rec = np.log10(a["traces"].sum(axis=(1, 2, 3), dtype=np.float64))
    clean = a["muon_traces"] + a["em_traces"]
    log_true = np.log10(clean.sum(axis=(1, 2, 3), dtype=np.float64))
    n_trig = a["triggered"].sum(axis=(1, 2)).astype(float)
    trig = a["triggered"][..., None]
    mu = (a["muon_traces"] * trig).sum(axis=(1, 2, 3))
    tot = (clean * trig).sum(axis=(1, 2, 3))
    muon_frac = np.where(tot > 0, mu / np.maximum(tot, 1), np.nan)
    columns = {
        "log10 S_rec": (log_rec, 0),
        "log10 S_true": (log_true, 3),
        "N_trig": (n_trig, 5),
        "muon fraction": (muon_frac, 7),
        "Xmax": (a["xmax"], 9),
    }
    for what, (values, col) in columns.items():
        _assert_agreement(_pulls(values, t[:, col], t[:, col + 1], t[:, 11], sels), what)
    for sel, row in zip(sels, t):
        assert log_rec[sel].std() == pytest.approx(row[1], rel=0.15)
        med_err = 1.25 * row[1] * math.sqrt(1 / row[11] + 1 / sel.sum())
        assert abs(np.median(log_rec[sel]) - row[2]) < 3 * med_err
        assert np.mean(log_rec[sel]) > np.median(log_rec[sel])  # skewed upwards


def test_footprint_statistics_versus_energy():
    cfg = make_config("reconstruction", "data", energy_distribution="linear")
    a = simulate(cfg, 6000, seed=12)
    total = a["footprint"].sum(axis=(1, 2))
    nonzero = (a["footprint"] > 0).sum(axis=(1, 2))
    assert np.array_equal(nonzero, a["triggered"].sum(axis=(1, 2)))
    table = [
        (1, 10, 16.1, 5.8, 90),
        (10, 30, 28.2, 10.2, 200),
        (30, 60, 36.6, 13.2, 300),
        (60, 100, 44.4, 16.0, 400),
    ]
    for lo, hi, mean_sum, mean_n, n_ref in table:
        sel = (a["energy"] >= lo) & (a["energy"] < hi)
        for x, ref in ((total[sel], mean_sum), (nonzero[sel], mean_n)):
            err = x.std() * math.sqrt(1 / n_ref + 1 / x.size)
            assert abs(x.mean() - ref) < 4 * err, (lo, hi, x.mean(), ref)


# --- behaviours of §12, §13, §18 -------------------------------------------------------------


@pytest.fixture(scope="module")
def matched_pair():
    kw = {"store_components": True}
    data = simulate(make_config("paper", "data", **kw), 3000, seed=3)
    sim = simulate(make_config("paper", "sim", **kw), 3000, seed=3)
    return data, sim


def test_same_seed_gives_matched_showers(matched_pair):
    data, sim = matched_pair
    for key in ("energy", "log10_energy", "xmax", "core", "axis"):
        assert np.array_equal(data[key], sim[key])
    assert not np.array_equal(data["traces"], sim["traces"])


def test_same_seed_is_reproducible_and_other_seed_differs():
    cfg = make_config("reconstruction", "data", batch_size=300)
    a, b = simulate(cfg, 700, seed=9), simulate(cfg, 700, seed=9)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    c = simulate(cfg, 700, seed=10)
    assert not np.array_equal(a["energy"], c["energy"])


def test_trigger_threshold_and_untriggered_stations(matched_pair):
    for arrays, threshold in zip(matched_pair, (115.2, 57.6)):
        trig = arrays["triggered"]
        assert arrays["footprint"][trig].min() >= math.log10(threshold + 1) - 1e-6
        assert np.all(arrays["footprint"][~trig] == 0)
        assert np.all(arrays["traces"][~trig] == 0)
        assert np.all(arrays["arrival_time"][~trig] == 0)
        assert np.isfinite(arrays["traces"]).all() and (arrays["traces"] >= 0).all()
        assert arrays["muon_traces"][~trig].sum() > 0  # components kept for all stations


def test_pedestal_level_is_halved_in_sim(matched_pair):
    for arrays, nu in zip(matched_pair, (1.2, 0.6)):
        clean = arrays["muon_traces"] + arrays["em_traces"]
        pure_noise = arrays["traces"][arrays["triggered"][..., None] & (clean == 0)]
        assert pure_noise.mean() == pytest.approx(nu, rel=0.03)


def test_sim_has_larger_muon_fraction_and_more_stations(matched_pair):
    data, sim = matched_pair
    frac = [
        a["muon_traces"].sum() / (a["muon_traces"] + a["em_traces"]).sum() for a in matched_pair
    ]
    assert frac[1] > 1.5 * frac[0]
    assert sim["triggered"].sum() > data["triggered"].sum()


def _centroid_time(traces):
    t = 12.5 + 25.0 * np.arange(traces.shape[-1])
    return (traces * t).sum(-1) / np.maximum(traces.sum(-1), 1e-9)


def test_muons_arrive_earlier_than_em_and_sim_rises_faster(matched_pair):
    data, sim = matched_pair
    both = (data["muon_traces"].sum(-1) > 50) & (data["em_traces"].sum(-1) > 50)
    assert np.all(
        _centroid_time(data["muon_traces"])[both] < _centroid_time(data["em_traces"])[both]
    )
    clean_d = data["muon_traces"] + data["em_traces"]
    clean_s = sim["muon_traces"] + sim["em_traces"]
    sel = (clean_d.sum(-1) > 100) & (clean_s.sum(-1) > 100)
    assert np.mean(_centroid_time(clean_s)[sel]) < np.mean(_centroid_time(clean_d)[sel]) - 10


def test_station_multiplicity_grows_with_energy(matched_pair):
    data = matched_pair[0]
    n_trig = data["triggered"].sum(axis=(1, 2))
    low, high = n_trig[data["energy"] < 20].mean(), n_trig[data["energy"] > 80].mean()
    assert high > low + 3
    hottest = data["footprint"].reshape(len(n_trig), -1).argmax(axis=1)
    assert np.mean(hottest == 40) > 0.99  # the central station, 'paper' preset (§17)


def test_float16_traces_are_clipped_not_infinite():
    cfg = make_config("paper", "data")
    full = simulate(cfg, 300, seed=4)
    half = simulate(cfg.replace(traces_dtype="float16"), 300, seed=4)
    assert half["traces"].dtype == np.float16 and np.isfinite(half["traces"]).all()
    assert half["traces"].max() == 65504.0 and full["traces"].max() > 65504
    assert np.array_equal(half["footprint"], full["footprint"])
    assert np.array_equal(half["triggered"], full["triggered"])


def test_spherical_front_delays_stations_relative_to_planar():
    cfg = make_config("reconstruction", "data")
    planar = simulate(cfg, 500, seed=6)
    sph = simulate(cfg.replace(wavefront="spherical"), 500, seed=6)
    both = planar["triggered"] & sph["triggered"]
    assert np.mean(sph["arrival_time"][both] - planar["arrival_time"][both]) > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"energy_min": 0.0}, "energy_min=0.0 must be positive"),
        ({"energy_min": 200.0}, "energy_min=200.0 must be below energy_max=100.0"),
        ({"zenith_max": 90.0}, "zenith_max=90.0 must be in [0, 90)"),
        ({"noise_level": -1.0}, "noise_level=-1.0 must not be negative"),
        ({"layout": "square"}, "layout='square' is not one of offset, axial, cartesian"),
        ({"xmax_fixed": 860.0}, "use a value below 851.094"),
    ],
)
def test_invalid_configurations_are_rejected(overrides, message):
    with pytest.raises(DetganError, match=message.replace("[", r"\[").replace(")", r"\)")):
        make_config("paper", "data", **overrides)


def test_unknown_preset_and_variant():
    with pytest.raises(DetganError, match="unknown air-shower preset 'foo'; choose one of"):
        make_config("foo")
    with pytest.raises(DetganError, match="unknown air-shower variant 'mc'"):
        make_config("paper", "mc")


def test_auto_threshold_resolves_and_can_be_overridden():
    assert make_config("paper", "data").threshold == pytest.approx(115.2)
    assert make_config("paper", "sim").threshold == pytest.approx(57.6)
    assert make_config("paper", "sim", trigger_threshold=100).threshold == 100
    assert make_config("paper", "sim", trigger_threshold="auto").threshold == pytest.approx(57.6)
