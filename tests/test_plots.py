"""Plots: every function returns a Figure from arrays, without a display or LaTeX."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from detgan import plots


def test_figures_from_arrays():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(size=400)
    figs = [
        plots.histogram_ratio(a, np.r_[b, np.nan], 30, xlabel="x", logy=True),
        plots.histogram_ratio(a, b, np.arange(0, 100) - 0.5),  # long integer binning is trimmed
        plots.image_comparison(rng.random((9, 9)), rng.random((9, 9)), log=True),
        plots.profile_comparison(np.arange(4), np.ones(4), np.full(4, 1.1)),
        plots.calibration_curves(
            {"low": [{"mean_predicted": [0.1, None], "fraction_reference": [0.2, None]}]}
        ),
        plots.matrix_comparison(np.eye(3), np.eye(3) * 0.5),
        plots.distance_overview(["a", "b"], [1e-2, 1e-3], [1e-4, 1e-4]),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert len(figs[0].axes) == 2  # histogram + ratio panel


def test_refine_figures_from_arrays():
    rng = np.random.default_rng(1)
    x = np.array([5.0, 15.0])
    curve = {q: rng.random(2) for q in ("bias", "bias_err", "resolution", "resolution_err")}
    figs = [
        plots.energy_bias_resolution(x, {"a": curve}, styles={"a": {"label": "a", "ls": "--"}}),
        plots.energy_scatter({"a": (x, x * 1.1)}, colours={"a": "k"}),
        plots.trace_comparison(
            {"station": {"data": rng.random(80), "sim": rng.random(80)}},
            styles={"data": {"lw": 1.8}, "sim": {"lw": 1.2}},
        ),
        plots.loss_curve(np.arange(120), rng.normal(size=120), label="−C1 + C2"),
        plots.loss_curve([], []),  # an empty history still gives a figure
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert len(figs[0].axes) == 2 and len(figs[2].axes) == 1
    assert figs[3].axes[0].get_legend().get_texts()[1].get_text() == "running mean (2)"
