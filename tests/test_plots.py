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
