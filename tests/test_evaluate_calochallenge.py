"""CaloChallenge-format files through the whole evaluation.

The high-level features, classifier inputs and separation powers are recomputed here from the
definitions of ``formats_and_metrics.md`` §1.1.4–§1.1.6, §2.1, §3.1 and §3.9 with the dataset
1-photons binning written out again (not taken from the package), and compared with what
``evaluate_files`` and the ``histogram_chi2`` text file report. Direction tests: identical
samples sit at the reference-vs-reference floor; a 5 % energy-scale shift, 20 % narrower
showers and dropped layer correlations are each detected far above it. Bad inputs fail with
the exact one-line message.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from detgan import metrics
from detgan.evaluate import EvaluationSettings, evaluate_files
from detgan.observables_calo import calochallenge_text_files
from detgan.utils import DetganError

# §1.1.5, dataset 1-photons: layer id → (r_edges in mm, n_alpha); V = 368, E_min = 1 MeV
LAYERS = {
    0: ([0, 5, 10, 30, 50, 100, 200, 400, 600], 1),
    1: ([0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, 50, 70, 90, 120, 150, 200], 10),
    2: ([0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200, 250, 300, 350, 400], 10),
    3: ([0, 50, 100, 200, 400, 600], 1),
    12: ([0, 100, 200, 400, 1000, 2000], 1),
}
E_MIN = 1.0
FAST = dict(classifier=False, fpd=False, n_bootstrap=5, seed=3)


def _voxels() -> dict[int, dict[str, np.ndarray]]:
    """Per layer: flat slice, r_c, η = r_c cos α, φ = r_c sin α (α-major, r fastest, §1.1.4)."""
    out, offset = {}, 0
    for lid, (edges, n_alpha) in LAYERS.items():
        e = np.asarray(edges, float)
        r_c = (e[:-1] + e[1:]) / 2
        alpha = -np.pi + (np.arange(n_alpha) + 0.5) * 2 * np.pi / n_alpha
        r = np.array([r_c[i] for j in range(n_alpha) for i in range(len(r_c))])
        a = np.array([alpha[j] for j in range(n_alpha) for i in range(len(r_c))])
        out[lid] = {
            "slice": slice(offset, offset + len(r)),
            "r": r,
            "eta": r * np.cos(a),
            "phi": r * np.sin(a),
        }
        offset += len(r)
    assert offset == 368
    return out


VOX = _voxels()


def _showers(seed, n=3000, *, scale=1.0, narrow=1.0, e_inc=None, shuffle_layers=False):
    """Toy photon showers in the dataset-1 binning: a depth variable correlates the layer
    energies; lateral profile exp(−r/R) with R scaled by ``narrow``; gamma voxel noise."""
    rng = np.random.default_rng(seed)
    e = 2.0 ** rng.integers(8, 23, n) if e_inc is None else np.full(n, float(e_inc))
    depth = rng.normal(0.0, 1.0, n)
    response = rng.normal(0.96, 0.02, n) * scale
    cells = np.zeros((n, 368))
    fracs = np.exp(-0.5 * ((np.arange(5)[:, None] - 1.6 - 0.6 * depth) / 0.9) ** 2)
    fracs /= fracs.sum(0)
    for k, v in enumerate(VOX.values()):
        frac = fracs[k]
        radius = (8.0 + 6.0 * k) * narrow
        weight = np.exp(-v["r"] / radius) * (1.0 + 0.3 * np.cos(v["phi"] / (v["r"] + 1)))
        noise = rng.gamma(25.0, 0.04, (n, weight.size))
        block = (frac * response * e)[:, None] * weight * noise / weight.sum()
        cells[:, v["slice"]] = block
    if shuffle_layers:  # same per-layer marginals, correlations between layers dropped
        for v in VOX.values():
            cells[:, v["slice"]] = cells[rng.permutation(n), v["slice"]]
    return e, cells


def _write(path, e, cells):
    with h5py.File(path, "w") as f:
        f["incident_energies"] = e.reshape(-1, 1).astype(np.float32)
        f["showers"] = cells.astype(np.float32)
    return path


def _evaluate(tmp_path, ref, cand, **settings):
    return evaluate_files(
        _write(tmp_path / "ref.h5", *ref),
        _write(tmp_path / "cand.h5", *cand),
        EvaluationSettings(**{**FAST, **settings}),
    )


def _features(e, cells):
    """§2.1 from scratch on float32-rounded inputs (as stored in the file), thresholded."""
    x = cells.astype(np.float32).astype(np.float64)
    e = e.astype(np.float32).astype(np.float64)
    x[x < E_MIN] = 0.0
    out = {"etot_einc": x.sum(1) / e, "etot": x.sum(1)}
    eps = 1e-16
    for lid, v in VOX.items():
        b = x[:, v["slice"]]
        el = b.sum(1)
        out[f"e_layer_{lid}"] = el
        for name in ("eta", "phi", "r") if LAYERS[lid][1] > 1 else ("r",):
            c = (b * v[name]).sum(1) / (el + eps)
            w = np.sqrt(np.maximum(0, (b * v[name] ** 2).sum(1) / (el + eps) - c**2))
            out[f"ec_{name}_{lid}"], out[f"width_{name}_{lid}"] = c, w
        out[f"sparsity_{lid}"] = (b == 0).mean(1)
    return x, e, out


def _sep(p_values, q_values, edges):
    """§3.1: S = ½ Σ (p − q)² / (p + q + 10⁻¹⁶) over in-range bin probabilities."""
    p = np.histogram(p_values, edges)[0].astype(float)
    q = np.histogram(q_values, edges)[0].astype(float)
    p, q = p / p.sum(), q / q.sum()
    return 0.5 * np.sum((p - q) ** 2 / (p + q + 1e-16))


def _text_blocks(text):
    lines = text.split("\n")
    return {
        lines[i][:-2]: lines[i + 1] for i in range(1, len(lines) - 1) if lines[i].endswith(": ")
    }


def test_features_and_classifier_inputs_follow_the_definitions(tmp_path):
    ref, cand = _showers(1, n=600), _showers(2, n=500)
    ev = _evaluate(tmp_path, ref, cand)
    data = ev.samples["calochallenge"][0]
    x, e, expected = _features(*ref)
    assert data.meta == {"dataset": "1-photons", "e_min": E_MIN}
    for name, values in expected.items():
        np.testing.assert_allclose(data.features[name], values, rtol=1e-9, atol=1e-9, err_msg=name)
    # cls-low (§3.2): [log10 E_inc, E_v / E_inc] of thresholded voxels, 369 values
    np.testing.assert_allclose(data.low[:, 0], np.log10(e), rtol=1e-6)
    np.testing.assert_allclose(data.low[:, 1:], x / e[:, None], rtol=1e-6, atol=1e-12)
    # cls-high (§3.2): the 30 values in the published block order
    alpha, rel = (1, 2), (0, 1, 2, 3, 12)
    f = expected
    cols = [np.log10(e)] + [np.log10(f[f"e_layer_{k}"] + 1e-8) for k in rel]
    for key in ("ec_eta", "ec_phi", "width_eta", "width_phi"):
        cols += [f[f"{key}_{k}"] / 100 for k in alpha]
    cols += [np.log10(f["etot"] + 1e-8)] + [f[f"sparsity_{k}"] for k in rel]
    cols += [f[f"ec_r_{k}"] / 100 for k in rel] + [f[f"width_r_{k}"] / 100 for k in rel]
    np.testing.assert_allclose(data.high, np.stack(cols, 1), rtol=1e-9, atol=1e-12)


def test_separation_powers_in_the_text_file_follow_the_published_binning(tmp_path):
    ref, cand = _showers(1, n=1500), _showers(2, n=1200, scale=1.02)
    ev = _evaluate(tmp_path, ref, cand)
    blocks = _text_blocks(calochallenge_text_files(ev)["histogram_chi2_1-photons.txt"])
    (xr, er, fr), (xc, ec, fc) = _features(*ref), _features(*cand)
    top = lambda name: fr[name].max()  # noqa: E731  (bins from the *reference* maximum)
    expected = {
        "Etot / Einc": _sep(fr["etot_einc"], fc["etot_einc"], np.linspace(0.5, 1.5, 101)),
        "E layer 1": _sep(
            fr["e_layer_1"], fc["e_layer_1"], np.logspace(0, np.log10(top("e_layer_1")), 40)
        ),
        "E layer 12": _sep(
            fr["e_layer_12"], fc["e_layer_12"], np.logspace(0, np.log10(top("e_layer_12")), 40)
        ),
        "EC Eta layer 2": _sep(fr["ec_eta_2"], fc["ec_eta_2"], np.linspace(-100, 100, 101)),
        "Width Phi layer 1": _sep(fr["width_phi_1"], fc["width_phi_1"], np.linspace(0, 100, 101)),
        "Voxel distribution": _sep(xr[xr > 0], xc[xc > 0], np.logspace(0, np.log10(xr.max()), 50)),
        "Sparsity layer 0": _sep(fr["sparsity_0"], fc["sparsity_0"], np.linspace(0, 1, 21)),
        "EC R layer 12": _sep(fr["ec_r_12"], fc["ec_r_12"], np.linspace(0, 1500, 101)),
        "Width R layer 3": _sep(fr["width_r_3"], fc["width_r_3"], np.linspace(0, 500, 101)),
    }
    for k in (8, 12, 20):  # per incident energy: [2^k, 2^(k+1)); photons from 4096 MeV narrow
        lo, hi = (0.9, 1.1) if k >= 12 else (0.4, 1.4)
        sel_r, sel_c = (
            (er >= 2.0**k) & (er < 2.0 ** (k + 1)),
            (ec >= 2.0**k) & (ec < 2.0 ** (k + 1)),
        )
        expected[f"Etot / Einc at E = {float(2**k)}"] = _sep(
            fr["etot_einc"][sel_r], fc["etot_einc"][sel_c], np.linspace(lo, hi, 21)
        )
    for name, value in expected.items():
        assert float(blocks[name]) == pytest.approx(value, rel=1e-9, abs=1e-15), name
    names = list(blocks)
    assert names[:6] == ["Etot / Einc", *(f"E layer {k}" for k in (0, 1, 2, 3, 12))]
    assert names.index("Width Phi layer 2") < names.index("Etot / Einc at E = 256.0")
    assert names.index("Etot / Einc at E = 4194304.0") + 1 == names.index("Voxel distribution")


def test_identical_samples_sit_at_the_floor(tmp_path):
    ref = _showers(1, n=2000)
    ev = _evaluate(tmp_path, ref, ref, classifier=True, classifier_runs=2, fpd=True)
    result = ev.summary["families"]["calochallenge"]
    m, floor = result["metrics"], result["floor"]
    for name, d in m["features"].items():
        assert d["separation"] == 0.0 and d["wasserstein"] == 0.0 and d["ks"] == 0.0, name
    assert m["correlation"]["mse"] == 0.0 < floor["correlation"]["mse"]
    assert m["cells"]["log1p_var_diff_max"] == 0.0
    assert abs(m["fpd"]["value_x1e3"]) <= floor["fpd"]["value_x1e3"] + 1e-9
    for key in ("classifier_low", "classifier_high"):
        assert abs(m[key]["auc"] - 0.5) < 0.05 and abs(floor[key]["auc"] - 0.5) < 0.05
    sep = [floor["features"][k]["separation"] for k in floor["features"]]
    assert np.mean(sep) > 0  # the floor itself is a finite-statistics number


def _ratio(ev, name, group="features"):
    r = ev.summary["families"]["calochallenge"]
    return r["metrics"][group][name]["separation"] / r["floor"][group][name]["separation"]


def test_energy_scale_shift_of_five_percent_is_detected(tmp_path):
    ev = _evaluate(tmp_path, _showers(1), _showers(2, scale=1.05))
    assert _ratio(ev, "etot_einc") > 5  # 3000 vs 3000 events, floor at 1500 vs 1500
    m = ev.summary["families"]["calochallenge"]["metrics"]["features"]["etot_einc"]
    assert m["separation"] > 0.1 and m["ks_pvalue"] < 1e-10


def test_twenty_percent_narrower_showers_are_detected(tmp_path):
    ev = _evaluate(tmp_path, _showers(1), _showers(2, narrow=0.8))
    for layer in (1, 2):  # (W_r of layer 1 sits in the first bins of the published [0, 500])
        assert _ratio(ev, f"width_eta_{layer}") > 20 and _ratio(ev, f"width_phi_{layer}") > 20
    assert _ratio(ev, "width_r_2") > 5
    assert _ratio(ev, "etot_einc") < 5  # the energy scale is untouched


def test_dropped_layer_correlations_are_detected(tmp_path):
    ref = _showers(1, e_inc=65536)
    ev = _evaluate(tmp_path, ref, _showers(2, e_inc=65536, shuffle_layers=True))
    r = ev.summary["families"]["calochallenge"]
    assert r["metrics"]["correlation"]["mse"] > 50 * r["floor"]["correlation"]["mse"]
    for layer in (0, 1, 2, 3, 12):  # every layer's own distribution is unchanged
        assert _ratio(ev, f"e_layer_{layer}") < 5


def test_bad_inputs_fail_with_one_exact_line(tmp_path):
    e, cells = _showers(1, n=50)
    ref = _write(tmp_path / "ref.h5", e, cells)
    cells[[7, 9], 3] = [np.nan, np.inf]
    bad = _write(tmp_path / "bad.h5", e, cells)
    with pytest.raises(DetganError) as err:
        evaluate_files(ref, bad, EvaluationSettings(**FAST))
    assert str(err.value) == (
        f"file '{bad}': dataset 'showers' has NaN or inf in 2 events (first: 7, 9); "
        "fix the file or drop them (--drop-nonfinite)"
    )
    other = tmp_path / "ds2.h5"
    with h5py.File(other, "w") as f:
        f["incident_energies"] = np.full((20, 1), 1000.0, np.float32)
        f["showers"] = np.ones((20, 6480), np.float32)
    with pytest.raises(DetganError) as err:
        evaluate_files(ref, other, EvaluationSettings(**FAST))
    assert str(err.value) == (
        f"candidate '{other}' is calochallenge dataset 2 with 6480 cells per event but "
        f"reference '{ref}' is calochallenge dataset 1-photons with 368 cells per event; "
        "compare samples of one detector geometry"
    )
    with pytest.raises(DetganError) as err:
        metrics.classifier_two_sample_test(np.zeros((20, 3)), np.full((20, 3), np.inf))
    assert str(err.value) == (
        "classifier_two_sample_test: candidate contains NaN or inf values (first rows [0, 1, "
        "2, 3, 4]); remove or fix those events"
    )
    # NaN marks an undefined feature value (§0.5) and is skipped; ±inf is refused
    assert metrics.wasserstein_1d([0.0, 1.0], [0.0, np.nan, 1.0], n_bootstrap=2).value == 0.0
    with pytest.raises(DetganError) as err:
        metrics.ks_test([0.0, 1.0], [np.inf])
    assert (
        str(err.value)
        == "ks_test: candidate contains inf values (first rows [0]); remove or fix those events"
    )


def test_published_classifier_protocol_is_exact():
    """§3.2: 3 hidden layers of 2048 (LeakyReLU 0.01, dropout 0), Adam 2·10⁻⁴, batch 1000,
    50 epochs, 10 runs, no standardisation, published per-class splits; FPD 20 draws, KPD
    batches of 10 000 (§3.3)."""
    import torch

    from detgan.classifier import _make_classifier, _split_counts

    s = EvaluationSettings(protocol="calochallenge")
    cs = s.classifier_settings()
    assert (cs.hidden, cs.n_layers, cs.learning_rate, cs.batch_size) == (2048, 3, 2e-4, 1000)
    assert (cs.epochs, cs.n_runs, cs.dropout, cs.standardize, cs.dtype) == (
        50,
        10,
        0.0,
        False,
        "float32",
    )
    assert cs.patience == 0 and cs.max_input_weights == 0 and cs.width_for(6481) == 2048
    net = _make_classifier(369, cs)
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [
        (369, 2048),
        (2048, 2048),
        (2048, 2048),
        (2048, 1),
    ]
    assert all(m.negative_slope == 0.01 for m in net if isinstance(m, torch.nn.LeakyReLU))
    assert _split_counts(121000) == (80000, 20000, 21000)
    assert _split_counts(120800) == (80000, 20000, 20800)
    assert _split_counts(100000) == (60000, 20000, 20000)
    assert _split_counts(20000) == (12000, 4000, 4000)
    assert (s.fpd_draws(362), s.kpd_batch()) == (20, 10000)
    fast = EvaluationSettings()
    assert (fast.fpd_draws(30), fast.fpd_draws(362), fast.kpd_batch()) == (10, 5, 5000)
    f = fast.classifier_settings()
    assert (f.width_for(369), f.width_for(1297), f.width_for(6481), f.patience) == (128, 128, 32, 5)


def test_prdc_uses_log10_cells_with_zeros_at_minus_one(tmp_path):
    """§3.4: PRDC on log10 of the thresholded voxels, exact zeros → 0.1 MeV, not cls-low."""
    ref = _showers(1, n=300)
    ev = _evaluate(tmp_path, ref, ref, prdc=True)
    p = ev.summary["families"]["calochallenge"]["metrics"]["prdc"]
    assert p["precision"] == p["recall"] == p["coverage"] == 1.0  # identical samples
    data = ev.samples["calochallenge"][0]
    from detgan.comparison import nn_representation

    rep = nn_representation(data)
    assert rep.min() == -1.0 and np.all(rep[data.cells > 0] >= 0.0)  # E ≥ E_min = 1 MeV
