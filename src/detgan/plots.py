"""Figures from arrays, in the usual HEP style; plotting never computes a metric.

Every function takes arrays (reference first, candidate second) and returns a
:class:`matplotlib.figure.Figure`; nothing here needs a display or a LaTeX installation (the
Agg backend and matplotlib's mathtext are used).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "REF_STYLE",
    "CAND_STYLE",
    "histogram_ratio",
    "image_comparison",
    "profile_comparison",
    "calibration_curves",
    "matrix_comparison",
    "distance_overview",
    "energy_bias_resolution",
    "energy_scatter",
    "trace_comparison",
    "loss_curve",
    "footprint_patterns",
    "energy_correlation",
    "loss_panels",
    "footprint_comparison",
]

REF_STYLE = {"color": "0.55", "label": "reference"}
CAND_STYLE = {"color": "#c0392b", "label": "candidate"}


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _trim(edges: np.ndarray, *samples: np.ndarray) -> np.ndarray:
    """Drop empty leading/trailing bins of long (e.g. integer) binnings for display."""
    data = np.concatenate(samples)
    if data.size == 0 or len(edges) < 12:
        return edges
    lo = max(np.searchsorted(edges, data.min(), side="right") - 2, 0)
    hi = min(np.searchsorted(edges, data.max(), side="left") + 2, len(edges))
    return edges[lo:hi] if hi - lo >= 3 else edges


def _log_spaced(edges: np.ndarray) -> bool:
    """True for positive, geometrically spaced edges (e.g. the CaloChallenge energy bins)."""
    if len(edges) < 3 or edges[0] <= 0:
        return False
    steps = np.diff(np.log(edges))
    return bool(np.allclose(steps, steps[0], rtol=1e-6) and edges[-1] / edges[0] > 20)


def _off_scale_markers(ax: Any, x: np.ndarray, ratio: np.ndarray, limits: tuple) -> None:
    """Ratios outside the panel drawn as open triangles on its edge (pointing outwards)."""
    lo, hi = limits
    pad = 0.04 * (hi - lo)
    for sel, y, marker in ((ratio > hi, hi - pad, "^"), (ratio < lo, lo + pad, "v")):
        if np.any(sel):
            ax.plot(
                x[sel],
                np.full(sel.sum(), y),
                marker,
                ms=3.5,
                mfc="none",
                mew=0.8,
                color=CAND_STYLE["color"],
            )


def histogram_ratio(
    reference: np.ndarray,
    candidate: np.ndarray,
    bins: np.ndarray | int = 40,
    *,
    xlabel: str = "",
    title: str = "",
    logy: bool = False,
    ratio_range: tuple[float, float] = (0.5, 1.5),
) -> Figure:
    """Normalised histograms (reference filled, candidate with Poisson error bars) and a ratio
    panel candidate/reference with the reference's statistical band (bins with at least 5
    reference entries). NaN values are skipped.

    Geometrically spaced ``bins`` (and, for ``bins`` given as a count, positive data spanning
    more than three decades) are drawn on a logarithmic x axis as the fraction of entries per
    bin; other bins as a density."""
    r, c = _finite(reference), _finite(candidate)
    if isinstance(bins, int | np.integer):
        both = np.concatenate([r, c]) if r.size + c.size else np.array([0.0, 1.0])
        lo, hi = np.percentile(both, [0.1, 99.9])
        if lo > 0 and hi > 1e3 * lo:
            bins = np.geomspace(lo, hi, int(bins) + 1)
        else:
            bins = np.linspace(lo, hi if hi > lo else lo + 1, int(bins) + 1)
    edges = _trim(np.asarray(bins, dtype=np.float64), r, c)
    logx = _log_spaced(edges)
    hr, _ = np.histogram(r, edges)
    hc, _ = np.histogram(c, edges)
    width = np.ones(len(edges) - 1) if logx else np.diff(edges)
    norm_r, norm_c = max(hr.sum(), 1) * width, max(hc.sum(), 1) * width
    dr, dc = hr / norm_r, hc / norm_c
    fig = Figure(figsize=(4.6, 3.9))
    (ax, axr) = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.06}
    )
    ax.stairs(dr, edges, fill=True, alpha=0.45, **REF_STYLE)
    centres = np.sqrt(edges[1:] * edges[:-1]) if logx else 0.5 * (edges[1:] + edges[:-1])
    ax.errorbar(centres, dc, yerr=np.sqrt(hc) / norm_c, fmt="o", ms=2.5, lw=1, **CAND_STYLE)
    ax.set_ylabel("fraction per bin" if logx else "normalised")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=9)
    with np.errstate(divide="ignore", invalid="ignore"):
        sparse = hr < 5  # no ratio point or band where the reference has < 5 entries
        ratio = np.where(sparse, np.nan, dc / dr)
        ratio_err = np.where(sparse, 0.0, np.sqrt(hc) / norm_c / dr)
        band = np.where(sparse, np.nan, np.sqrt(hr) / hr)
    axr.fill_between(
        edges,
        np.r_[1 - band, 1 - band[-1]],
        np.r_[1 + band, 1 + band[-1]],
        step="post",
        color="0.85",
        lw=0,
    )
    axr.axhline(1, color="0.4", lw=0.8)
    axr.errorbar(
        centres,
        ratio,
        yerr=np.nan_to_num(ratio_err, posinf=0.0),
        fmt="o",
        ms=2,
        lw=0.8,
        color=CAND_STYLE["color"],
    )
    _off_scale_markers(axr, centres, ratio, ratio_range)
    axr.set_ylim(*ratio_range)
    axr.set_ylabel("cand./ref.", fontsize=8)
    axr.set_xlabel(xlabel)
    fig.subplots_adjust(left=0.16, right=0.97, top=0.92, bottom=0.13)
    return fig


def image_comparison(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    title: str = "",
    log: bool = False,
    xlabel: str = "",
    ylabel: str = "",
) -> Figure:
    """Three panels: reference image, candidate image (shared colour scale), candidate/reference.

    2-D arrays (rows = first axis, drawn along y); ``log`` uses a logarithmic colour scale.
    """
    from matplotlib.colors import LogNorm, Normalize

    r, c = np.asarray(reference, float), np.asarray(candidate, float)
    positive = np.concatenate([r[r > 0], c[c > 0]])
    vmax = float(max(r.max(), c.max(), 1e-12))
    norm = (
        LogNorm(max(positive.min(), vmax * 1e-6), vmax)
        if log and positive.size
        else Normalize(min(r.min(), c.min(), 0.0), vmax)
    )
    fig = Figure(figsize=(9.0, 3.0))
    axes = fig.subplots(1, 3)
    aspect = "auto" if max(r.shape) > 4 * min(r.shape) else "equal"
    for ax, img, name in ((axes[0], r, "reference"), (axes[1], c, "candidate")):
        im = ax.imshow(img, origin="lower", norm=norm, cmap="viridis", aspect=aspect)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[:2], fraction=0.025, pad=0.02)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(r > 0, c / np.where(r > 0, r, 1), np.nan)
    im2 = axes[2].imshow(ratio, origin="lower", cmap="RdBu_r", vmin=0.5, vmax=1.5, aspect=aspect)
    axes[2].set_title("candidate / reference", fontsize=9)
    fig.colorbar(im2, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def profile_comparison(
    x: np.ndarray,
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    reference_error: np.ndarray | None = None,
    candidate_error: np.ndarray | None = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    logy: bool = False,
) -> Figure:
    """A profile (mean per x) of both samples with error bars and a ratio panel."""
    x = np.asarray(x, float)
    r, c = np.asarray(reference, float), np.asarray(candidate, float)
    fig = Figure(figsize=(4.6, 3.9))
    (ax, axr) = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.06}
    )
    ax.errorbar(x, r, yerr=reference_error, fmt="-", lw=2, alpha=0.7, **REF_STYLE)
    ax.errorbar(x, c, yerr=candidate_error, fmt="o", ms=3, lw=1, **CAND_STYLE)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    with np.errstate(divide="ignore", invalid="ignore"):
        axr.plot(x, c / r, "o", ms=3, color=CAND_STYLE["color"])
    axr.axhline(1, color="0.4", lw=0.8)
    axr.set_ylim(0.5, 1.5)
    axr.set_ylabel("cand./ref.", fontsize=8)
    axr.set_xlabel(xlabel)
    fig.subplots_adjust(left=0.16, right=0.97, top=0.92, bottom=0.13)
    return fig


def calibration_curves(
    curves: Mapping[str, Sequence[Mapping[str, Sequence]]],
    *,
    title: str = "",
    min_count: int = 20,
) -> Figure:
    """Reliability diagrams: per input name, the per-run (mean predicted, fraction reference);
    bins holding fewer than ``min_count`` validation events (a run's ``count``) are left out."""
    fig = Figure(figsize=(4.0, 3.6))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="0.5", lw=1)
    colours = ["#2471a3", "#c0392b", "#27ae60", "#8e44ad"]
    for k, (name, runs) in enumerate(curves.items()):
        for i, run in enumerate(runs):
            xs = np.array([np.nan if v is None else v for v in run["mean_predicted"]], float)
            ys = np.array([np.nan if v is None else v for v in run["fraction_reference"]], float)
            keep = np.asarray(run.get("count", [min_count] * len(xs))) >= min_count
            xs, ys = xs[keep], ys[keep]
            ax.plot(
                xs,
                ys,
                "o-",
                ms=3,
                lw=1,
                alpha=0.7,
                color=colours[k % 4],
                label=name if i == 0 else None,
            )
    ax.set_xlabel("calibrated probability (reference)")
    ax.set_ylabel("fraction of reference events")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def matrix_comparison(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    title: str = "",
    labels: Sequence[str] | None = None,
) -> Figure:
    """Correlation matrices of both samples and their difference (candidate − reference);
    ``labels`` name the rows/columns (e.g. layer ids) when there are few of them."""
    fig = Figure(figsize=(9.6, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, m, name in ((axes[0], reference, "reference"), (axes[1], candidate, "candidate")):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[:2], fraction=0.025, pad=0.02, label="correlation")
    diff = np.asarray(candidate) - np.asarray(reference)
    lim = max(float(np.abs(diff).max()), 1e-3)
    im2 = axes[2].imshow(diff, cmap="PuOr", vmin=-lim, vmax=lim)
    axes[2].set_title("candidate − reference", fontsize=9)
    fig.colorbar(im2, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.tick_params(labelsize=7)
        if labels is not None and len(labels) <= 50:
            ticks = np.arange(len(labels))
            step = max(1, len(labels) // 12)
            ax.set_xticks(ticks[::step], [str(v) for v in labels][::step])
            ax.set_yticks(ticks[::step], [str(v) for v in labels][::step])
    fig.suptitle(title, fontsize=10)
    return fig


def distance_overview(
    names: Sequence[str],
    values: Sequence[float],
    floors: Sequence[float],
    *,
    xlabel: str = "separation power",
    title: str = "",
) -> Figure:
    """Horizontal bars of a per-feature distance, with the reference-vs-reference floor marked."""
    n = len(names)
    fig = Figure(figsize=(5.6, 0.8 + 0.24 * n))
    ax = fig.subplots()
    y = np.arange(n)
    ax.barh(y, values, color=CAND_STYLE["color"], alpha=0.75, label="candidate vs reference")
    ax.plot(floors, y, "|", ms=12, mew=2, color="k", label="floor (reference halves)")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.legend(frameon=False, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2)
    ax.set_title(title, fontsize=9, loc="right")
    fig.tight_layout()
    return fig


def energy_bias_resolution(
    x: np.ndarray,
    curves: Mapping[str, Mapping[str, np.ndarray]],
    *,
    styles: Mapping[str, Mapping[str, Any]],
    xlabel: str = "E_true / EeV",
) -> Figure:
    """Bias and resolution of r = (E_rec − E_true)/E_true per bin (Fig. 6 of arXiv:1802.03325).

    ``x`` (B,) bin centres; ``curves[name]`` holds ``bias``, ``bias_err``, ``resolution`` and
    ``resolution_err`` (B,); ``styles[name]`` are the curve's line keywords (colour, label, ls).
    """
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for name, curve in curves.items():
        for ax, q in zip(axes, ("bias", "resolution")):
            ax.errorbar(x, curve[q], curve[f"{q}_err"], marker="o", ms=3, capsize=2, **styles[name])
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set(xlabel=xlabel, ylabel="bias ⟨(E_rec − E_true)/E_true⟩")
    axes[1].set(xlabel=xlabel, ylabel="resolution σ((E_rec − E_true)/E_true)", ylim=(0, None))
    axes[0].legend(fontsize=7)
    return fig


def energy_scatter(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], *, colours: Mapping[str, str]
) -> Figure:
    """One panel per title: reconstructed against true energy (EeV), ``pairs[title]`` =
    (E_true (N,), E_rec (N,)), with the diagonal."""
    fig = Figure(figsize=(12, 3.2), layout="constrained")
    for ax, (title, (truth, pred)) in zip(
        fig.subplots(1, len(pairs), squeeze=False)[0], pairs.items()
    ):
        ax.scatter(truth, pred, s=2, alpha=0.3, color=colours[title], rasterized=True)
        ax.plot([1, 100], [1, 100], color="k", lw=0.8)
        ax.set(
            xlabel="E_true / EeV", ylabel="E_rec / EeV", title=title, xlim=(0, 105), ylim=(0, 140)
        )
    return fig


def trace_comparison(
    panels: Mapping[str, Mapping[str, np.ndarray]],
    *,
    styles: Mapping[str, Mapping[str, Any]],
    dt: float = 25.0,
) -> Figure:
    """One panel per title: the traces (T,) of several samples (VEM per bin of ``dt`` ns) as
    steps on a symlog scale (Fig. 5 of arXiv:1802.03325); ``styles[sample]``: line keywords."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    for ax, (title, traces) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        for name, trace in traces.items():
            t = np.arange(len(trace)) * dt
            ax.step(t, trace, where="post", label=name, **styles[name])
        ax.set(xlabel="t / ns", ylabel=f"signal / VEM per {dt:g} ns", yscale="symlog", title=title)
        ax.legend(fontsize=7)
    return fig


def loss_curve(
    step: np.ndarray,
    loss: np.ndarray,
    *,
    label: str = "loss",
    xlabel: str = "iteration",
    ylabel: str = "loss",
) -> Figure:
    """A training loss (N,) against the step (N,): raw, and its running mean over ~N/50 steps
    for the eye (Fig. 7 of arXiv:1802.03325 for the critic loss −C1 + C2)."""
    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.subplots()
    step, loss = np.asarray(step), np.asarray(loss)
    if len(step):
        w = max(1, len(step) // 50)
        ax.plot(step, loss, color="0.7", lw=0.5, label=label)
        ax.plot(
            step[w - 1 :],
            np.convolve(loss, np.ones(w) / w, "valid"),
            color="#2471a3",
            label=f"running mean ({w})",
        )
        ax.legend(fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    return fig


def _station_map(ax: Any, values: np.ndarray, vmax: float) -> Any:
    """Hexagonal station map of one footprint (n, n) on ``ax`` ('offset' grid, airshower.md §3)."""
    from detgan.observables import station_grid

    xy = station_grid(values.shape[0])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    kw = {"s": 90, "marker": "h", "cmap": "viridis", "vmin": 0, "vmax": vmax, "edgecolors": "none"}
    return ax.scatter(xy[:, 0], xy[:, 1], c=values.ravel(), **kw)


def footprint_patterns(
    patterns: np.ndarray, titles: Sequence[Sequence[str]], *, label: str = "log10(S/VEM + 1)"
) -> Figure:
    """A grid of footprints ``patterns`` (rows, cols, n, n) as station maps on one colour scale,
    ``titles[row][col]`` above each (Fig. 2 of arXiv:1802.03325)."""
    rows, cols = patterns.shape[:2]
    fig = Figure(figsize=(3 * cols, 3 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    vmax = float(patterns.max()) or 1.0
    for r in range(rows):
        for c in range(cols):
            im = _station_map(axes[r, c], patterns[r, c], vmax)
            axes[r, c].set_title(titles[r][c], fontsize=9)
    fig.colorbar(im, ax=axes, label=label, shrink=0.8)
    return fig


def energy_correlation(label: np.ndarray, estimate: np.ndarray, *, title: str = "") -> Figure:
    """An energy estimate (N,) against the label energy (N,) in EeV, with the diagonal (Fig. 3 of
    arXiv:1802.03325: the constrainer's energy of generated footprints)."""
    fig = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.scatter(label, estimate, s=2, alpha=0.3, rasterized=True)
    lim = [0, max(float(np.max(label)), float(np.max(estimate))) * 1.05]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(xlabel="E_label [EeV]", ylabel="E_constrainer [EeV]", title=title)
    return fig


def loss_panels(
    step: np.ndarray,
    panels: Sequence[Mapping[str, np.ndarray]],
    *,
    log_panels: Sequence[int] = (),
    skip_fraction: float = 0.02,
) -> Figure:
    """Side-by-side panels of loss curves against the iteration ``step`` (N,); ``panels[i]``
    maps a name to its values (N,), drawn raw and as a running mean over ~N/100 steps (Fig. 4 of
    arXiv:1802.03325). Linear panels are zoomed past the first ``skip_fraction`` of training."""
    fig = Figure(figsize=(4 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    w = max(1, len(step) // 100)
    start = int(len(step) * skip_fraction)
    for i, (ax, series) in enumerate(zip(axes, panels)):
        late = []
        for name, values in series.items():
            v = np.asarray(values, dtype=float)
            (line,) = ax.plot(step[w - 1 :], np.convolve(v, np.ones(w) / w, "valid"), label=name)
            ax.plot(step, v, alpha=0.25, lw=0.5, color=line.get_color())
            late.append(v[start:])
        ax.set_xlabel("generator iteration")
        ax.legend()
        if i in log_panels:
            ax.set_yscale("log")
            continue
        lo, hi = np.nanmin(np.concatenate(late)), np.nanmax(np.concatenate(late))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    return fig


def footprint_comparison(
    deciles: tuple[np.ndarray, np.ndarray, np.ndarray],
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    lateral: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> Figure:
    """Generated vs reference footprints in four panels: ``deciles`` = (energy-decile centres,
    reference means, candidate means) of Σ log10(S+1); histograms of ``n_stations`` and
    ``hottest_signal`` (per-event arrays in ``reference``/``candidate``); ``lateral`` =
    (distance in spacings, reference profile, candidate profile)."""
    fig = Figure(figsize=(13, 3.4), layout="constrained")
    axes = fig.subplots(1, 4)
    centre, ref_mean, cand_mean = deciles
    axes[0].plot(centre, ref_mean, "ko", label="reference")
    axes[0].plot(centre, cand_mean, "r^", label="generated")
    axes[0].set(xlabel="E [EeV] (decile centre)", ylabel="mean Σ log10(S+1)")
    top = max(reference["n_stations"].max(), candidate["n_stations"].max())
    for ax, key, bins, xlabel in (
        (axes[1], "n_stations", np.arange(-0.5, top + 1.5), "stations above threshold"),
        (axes[2], "hottest_signal", 40, "hottest station log10(S+1)"),
    ):
        edges = np.histogram_bin_edges(np.concatenate([reference[key], candidate[key]]), bins)
        ax.hist(reference[key], edges, histtype="step", color="k", label="reference")
        ax.hist(candidate[key], edges, histtype="step", color="r", label="generated")
        ax.set_xlabel(xlabel)
    distance, ref_prof, cand_prof = lateral
    axes[3].plot(distance, ref_prof, "ko-", label="reference")
    axes[3].plot(distance, cand_prof, "r^--", label="generated")
    axes[3].set(xlabel="distance to hottest station [spacings]", ylabel="mean log10(S+1)")
    for ax in axes:
        ax.legend(fontsize=8)
    return fig
