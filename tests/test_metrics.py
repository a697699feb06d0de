"""Metrics: known values on constructed inputs, direction tests, error paths."""

from __future__ import annotations

import numpy as np
import pytest

from detgan import metrics
from detgan.utils import DetganError


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_wasserstein_known_shift(rng):
    x = rng.normal(size=5000)
    d = metrics.wasserstein_1d(x, x + 0.3, n_bootstrap=20, seed=1)
    assert d.value == pytest.approx(0.3, abs=1e-9)  # a pure shift moves every quantile by 0.3
    assert 0 < d.error < 0.05
    assert metrics.wasserstein_1d(x, x, n_bootstrap=5).value == 0.0


def test_wasserstein_matches_scipy(rng):
    stats = pytest.importorskip("scipy.stats")
    a, b = rng.normal(size=300), rng.exponential(size=200)
    assert metrics.wasserstein_1d(a, b, n_bootstrap=2).value == pytest.approx(
        stats.wasserstein_distance(a, b), rel=1e-12
    )


def test_ks_matches_scipy(rng):
    stats = pytest.importorskip("scipy.stats")
    a, b = rng.normal(size=400), rng.normal(0.2, 1, size=300)
    ours, ref = metrics.ks_test(a, b), stats.ks_2samp(a, b)
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=0.2, abs=1e-4)


def test_separation_power_limits(rng):
    x = rng.uniform(0, 1, 1000)
    bins = np.linspace(0, 1, 11)
    assert metrics.separation_power(x, x, bins).value == pytest.approx(0.0)
    disjoint = metrics.separation_power(x * 0.5, 0.5 + x * 0.5, bins)
    assert disjoint.value == pytest.approx(1.0)
    # hand-computed: p = (1, 0), q = (1/2, 1/2) → ½[(½)²/(3/2) + (½)²/(½)] = 1/3
    s = metrics.separation_power([0.1, 0.2], [0.1, 0.9], [0, 0.5, 1])
    assert s.value == pytest.approx(1 / 3)


def test_separation_power_reports_out_of_range_and_nan():
    s = metrics.separation_power([0.5, 0.5, np.nan], [-1.0, 0.5, 2.0, 0.5], [0, 1])
    assert s.undefined_reference == 1
    assert s.underflow_candidate == pytest.approx(0.25)
    assert s.overflow_candidate == pytest.approx(0.25)
    with pytest.warns(UserWarning):
        assert np.isnan(metrics.separation_power([5.0], [0.5], [0, 1]).value)


def test_energy_scale_shift_detected_at_published_binning(rng):
    """A 5 % energy-scale shift of the response is detected at [0.5, 1.5] / 100 bins."""
    resp = rng.normal(1.0, 0.02, 20000)
    other = rng.normal(1.0, 0.02, 20000)
    bins = np.linspace(0.5, 1.5, 101)
    floor = metrics.separation_power(resp, other, bins).value
    shifted = metrics.separation_power(resp, other * 1.05, bins).value
    assert shifted > 0.5 > 100 * floor


def test_narrower_distribution_detected(rng):
    a, b = rng.normal(size=20000), rng.normal(size=20000)
    narrow = 0.8 * rng.normal(size=20000)
    w_floor = metrics.wasserstein_1d(a, b, n_bootstrap=10)
    w_narrow = metrics.wasserstein_1d(a, narrow, n_bootstrap=10)
    assert w_narrow.value > w_floor.value + 5 * w_narrow.error
    assert metrics.ks_test(a, narrow).pvalue < 1e-6 < metrics.ks_test(a, b).pvalue


def test_default_bins_integer_and_continuous():
    edges = metrics.default_bins([1, 2, 2, 5])
    assert np.allclose(edges, np.arange(1, 7) - 0.5)
    cont = metrics.default_bins([0.1, 0.7])
    assert len(cont) == 51 and cont[0] < 0.1 and cont[-1] > 0.7


def test_nonfinite_and_mismatched_inputs_rejected():
    with pytest.raises(DetganError, match="NaN or inf"):
        metrics.classifier_two_sample_test(np.full((20, 2), np.nan), np.zeros((20, 2)))
    with pytest.raises(DetganError, match="per-event shape"):
        metrics.correlation_mse(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(DetganError, match="inf"):
        metrics.wasserstein_1d([1.0, np.inf], [1.0])
    with pytest.raises(DetganError, match="empty"):
        metrics.ks_test([], [1.0])


def test_cell_statistics_known_ratios(rng):
    ref = rng.normal(2.0, 1.0, size=(4000, 3))
    cand = ref * np.array([1.0, 2.0, 1.0])
    cand[:, 2] = 0.0
    st = metrics.cell_statistics(ref, cand)
    assert st.mean_ratio[:2] == pytest.approx([1.0, 2.0])
    assert st.var_ratio[:2] == pytest.approx([1.0, 4.0])
    assert st.var_ratio[2] == 0.0
    assert st.summary()["log1p_var_diff_max"] > 0


def test_correlation_mse_detects_dropped_correlation(rng):
    z = rng.normal(size=(5000, 1))
    ref = np.hstack([z, z + 0.3 * rng.normal(size=(5000, 1)), rng.normal(size=(5000, 1))])
    twin = np.hstack([z, z + 0.3 * rng.normal(size=(5000, 1)), rng.normal(size=(5000, 1))])
    shuffled = ref.copy()
    shuffled[:, 1] = rng.permutation(shuffled[:, 1])  # same marginals, correlation dropped
    c = metrics.correlation_matrix(ref)
    assert c[0, 1] == pytest.approx(1 / np.sqrt(1.09), abs=0.02)
    floor = metrics.correlation_mse(ref, twin).mse
    dropped = metrics.correlation_mse(ref, shuffled).mse
    assert dropped == pytest.approx(2 * c[0, 1] ** 2 / 9, rel=0.05)
    assert dropped > 100 * floor


def test_constant_cell_gets_zero_row():
    x = np.column_stack([np.arange(10.0), np.ones(10)])
    c = metrics.correlation_matrix(x)
    assert c[1].tolist() == [0.0, 0.0] and c[0, 0] == pytest.approx(1.0)


def test_memorisation_check(rng):
    train = rng.normal(size=(1500, 4))
    held = rng.normal(size=(800, 4))
    copies = metrics.memorisation_check(train, held, train[:800] + 1e-9)
    fresh = metrics.memorisation_check(train, held, rng.normal(size=(800, 4)))
    assert copies.median_ratio < 0.01 and copies.n_copies == 800
    assert 0.85 < fresh.median_ratio < 1.15 and fresh.n_copies == 0


def test_prdc_same_and_disjoint(rng):
    a, b = rng.normal(size=(1500, 3)), rng.normal(size=(1500, 3))
    same = metrics.prdc(a, b)
    assert same.precision > 0.8 and same.recall > 0.8 and same.coverage > 0.8
    assert same.density == pytest.approx(1.0, abs=0.15)
    far = metrics.prdc(a, b + 50)
    assert far.precision == far.recall == far.density == far.coverage == 0.0


def test_fpd_batch_sizes_published():
    assert metrics.fpd_batch_sizes().tolist() == [
        10000,
        10975,
        12162,
        13636,
        15517,
        18000,
        21428,
        26470,
        34615,
        49999,
    ]


def test_fpd_mean_shift_and_identity(rng):
    a, b = rng.normal(size=(3000, 3)), rng.normal(size=(3000, 3))
    kw = dict(n_min=500, n_max=3000, n_bootstrap=4, normalise=False)
    same = metrics.frechet_physics_distance(a, b, **kw)
    shift = metrics.frechet_physics_distance(a, b + np.array([0.6, 0.0, 0.0]), **kw)
    assert same.value < 0.01
    # unit covariances: FPD ≈ |δ|², δ the (empirical) mean difference, nominally 0.6
    delta2 = float(np.sum((a.mean(0) - b.mean(0) - [0.6, 0, 0]) ** 2))
    assert shift.value == pytest.approx(delta2, abs=0.04) and 0.25 < delta2 < 0.5


def test_kpd_identical_consistent_with_zero(rng):
    a = rng.normal(size=(2000, 3))
    same = metrics.kernel_physics_distance(
        a, rng.normal(size=(2000, 3)), batch_size=500, normalise=False
    )
    shift = metrics.kernel_physics_distance(
        a, rng.normal(size=(2000, 3)) + 0.5, batch_size=500, normalise=False
    )
    assert abs(same.value) < 3 * same.error + 1e-3
    assert shift.value > 10 * abs(same.value)


def test_roc_auc_and_isotonic():
    assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert metrics.roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # ties count ½
    f = metrics.isotonic_fit([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    out = f([0.0, 0.1, 0.25, 0.4, 1.0])
    assert np.all(np.diff(out) >= 0)
    assert out[0] == pytest.approx(1e-6) and out[-1] == pytest.approx(1 - 1e-6)
    assert out[2] == pytest.approx(0.5)


SMALL = metrics.ClassifierSettings(hidden=32, n_layers=2, epochs=8, n_runs=2, batch_size=256)


def test_classifier_same_distribution(rng):
    a, b = rng.normal(size=(3000, 4)), rng.normal(size=(2400, 4))
    res = metrics.classifier_two_sample_test(a, b, seed=3, settings=SMALL)
    assert abs(res.auc - 0.5) < 0.04 and abs(res.jsd) < 0.05
    assert res.n_per_class == 2400 and res.n_dropped == 600
    assert len(res.runs) == 2 and np.isfinite(res.auc_std)
    again = metrics.classifier_two_sample_test(a, b, seed=3, settings=SMALL)
    assert again.auc == res.auc  # seeded runs reproduce


def test_classifier_detects_shift(rng):
    a, b = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    b[:, 0] += 3.0
    res = metrics.classifier_two_sample_test(a, b, settings=SMALL)
    assert res.auc > 0.95 and res.jsd > 0.5


def test_classifier_settings_validation():
    with pytest.raises(DetganError, match="n_runs"):
        metrics.ClassifierSettings(n_runs=0)
    with pytest.raises(DetganError, match="classifier preset"):
        metrics.ClassifierSettings.preset("huge")
    assert metrics.ClassifierSettings.preset("calochallenge").hidden == 2048


def test_classifier_legacy_equal_sizes_and_unseeded(rng):
    """§A.10: the published protocol refuses unequal sizes; seed=None draws and records a seed."""
    a, b = rng.normal(size=(300, 3)), rng.normal(size=(200, 3))
    strict = SMALL.replace(equal_sizes=True, n_runs=1, epochs=2)
    with pytest.raises(DetganError, match="needs equal sample sizes, got 300 reference and 200"):
        metrics.classifier_two_sample_test(a, b, settings=strict)
    res = metrics.classifier_two_sample_test(a[:200], b, seed=None, settings=strict)
    assert isinstance(res.seed, int) and len(res.runs) == 1
    again = metrics.classifier_two_sample_test(a[:200], b, seed=res.seed, settings=strict)
    assert again.auc == res.auc  # the recorded seed repeats the "unseeded" run


def test_classifier_module_reexported():
    from detgan import classifier

    assert metrics.classifier_two_sample_test is classifier.classifier_two_sample_test
    assert metrics.ClassifierSettings is classifier.ClassifierSettings
