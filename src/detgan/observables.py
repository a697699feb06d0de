"""Physics observables of air-shower footprints and time traces, and classifier input vectors.

Everything here maps event-major arrays to per-event (or per-station) feature arrays in float64;
a feature that is undefined for an event (e.g. a rise time of an event without signal) is NaN
(``formats_and_metrics.md`` §0.5). Input conventions are ``airshower.md`` §16–17: footprints
``(N, n, n)`` hold log10(S + 1) per station, 0 where untriggered; traces ``(N, n, n, T)`` hold
the recorded signal in VEM per 25 ns bin, pedestal included. Calorimeter features live in
:mod:`detgan.observables_calo`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from detgan.utils import DetganError

__all__ = [
    "station_grid",
    "footprint_observables",
    "lateral_profile",
    "trace_quantile_times",
    "trace_observables",
    "trace_station_observables",
    "rebin_traces",
    "feature_matrix",
    "FOOTPRINT_LABELS",
    "TRACE_LABELS",
    "N_RINGS",
]

#: Number of lateral rings (0 = hottest station, k = stations ≈ k spacings away).
N_RINGS = 4

FOOTPRINT_LABELS = {
    "sum_log_signal": "Σ log10(S+1) over stations",
    "log10_total_signal": "log10(total signal / VEM)",
    "n_stations": "number of triggered stations",
    "hottest_signal": "hottest station log10(S+1)",
    "lateral_spread": "signal-weighted RMS spread / spacing",
    **{f"ring_{k}": f"mean log10(S+1), {k} spacings from hottest" for k in range(1, N_RINGS)},
}

TRACE_LABELS = {
    "log10_integral_total": "log10(Σ trace / VEM), all stations",
    "n_triggered": "stations with signal",
    "log10_integral": "log10(trace integral / VEM), hottest station",
    "peak_time": "peak time / ns, hottest station",
    "rise_time": "rise time t50 − t10 / ns, hottest station",
    "fall_time": "fall time t90 − t50 / ns, hottest station",
}


def station_grid(n_side: int = 9, layout: str = "offset") -> np.ndarray:
    """Station (x, y) positions in units of the spacing d, shape (n², 2), k = i·n + j.

    'offset': x = i − n0 + ½((j − n0) mod 2), y = (j − n0) sin 60°; 'axial' shifts by ½(j − n0);
    'cartesian': x = i − n0, y = j − n0 (``airshower.md`` §3).
    """
    n0 = (n_side - 1) / 2
    i, j = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    shifts = {"offset": 0.5 * np.mod(j - n0, 2), "axial": 0.5 * (j - n0), "cartesian": 0.0 * j}
    if layout not in shifts:
        raise DetganError(f"unknown station layout '{layout}'; use offset, axial or cartesian")
    y_step = math.sin(math.radians(60)) if layout != "cartesian" else 1.0
    return np.stack([i - n0 + shifts[layout], y_step * (j - n0)], -1).reshape(-1, 2).astype(float)


def _check_events(x: np.ndarray, ndim: int, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim or x.shape[0] == 0:
        raise DetganError(
            f"{name} must have shape {'(N, n, n)' if ndim == 3 else '(N, n, n, T)'} "
            f"with N > 0, got {x.shape}"
        )
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.unique(np.nonzero(~np.isfinite(x))[0])[:5].tolist()
        raise DetganError(f"{name} contains NaN or inf values (first events {bad})")
    return x.astype(np.float64, copy=False)


def footprint_observables(
    footprint: np.ndarray, *, layout: str = "offset"
) -> dict[str, np.ndarray]:
    """Per-event footprint observables, each (N,), from footprints f = log10(S + 1) of (N, n, n).

    - ``sum_log_signal`` = Σ_k f_k (the paper's per-event sum);
    - ``log10_total_signal`` = log10 Σ_k (10^{f_k} − 1), NaN without triggered station;
    - ``n_stations`` = #{k : f_k > 0}; ``hottest_signal`` = max_k f_k;
    - ``lateral_spread`` = sqrt(Σ f_k |x_k − x̄|² / Σ f_k), x̄ = Σ f_k x_k / Σ f_k, in spacings;
    - ``ring_k`` = mean f over the stations whose distance to the hottest station rounds to
      k spacings (k = 1 … 3; ring 2 holds the √3- and 2-spacing neighbours; ring 0 is the
      hottest station itself); NaN if no such station exists in the grid.
    """
    f = _check_events(footprint, 3, "footprint")
    n, side = f.shape[0], f.shape[1]
    flat = f.reshape(n, -1)
    pos = station_grid(side, layout)
    total = flat.sum(1)
    signal = np.clip(10.0**flat - 1.0, 0.0, None).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = flat @ pos / total[:, None]
        d2 = ((pos[None] - centre[:, None]) ** 2).sum(-1)
        spread = np.sqrt((flat * d2).sum(1) / total)
        out = {
            "sum_log_signal": total,
            "log10_total_signal": np.where(
                signal > 0, np.log10(np.where(signal > 0, signal, 1)), np.nan
            ),
            "n_stations": (flat > 0).sum(1).astype(np.float64),
            "hottest_signal": flat.max(1),
            "lateral_spread": np.where(total > 0, spread, np.nan),
        }
    rings = _lateral_profile(flat, pos, N_RINGS)
    out.update({f"ring_{k}": rings[:, k] for k in range(1, N_RINGS)})
    return out


def lateral_profile(
    footprint: np.ndarray, n_rings: int = N_RINGS, *, layout: str = "offset"
) -> np.ndarray:
    """Lateral profile around the hottest station, (N, n, n) → (N, n_rings).

    Column k is the mean f = log10(S + 1) over the stations whose distance to the hottest station
    rounds to k spacings (k = 0 is the hottest station itself; ring 2 holds the √3- and
    2-spacing neighbours); NaN where the grid has no such station.
    """
    f = _check_events(footprint, 3, "footprint")
    return _lateral_profile(f.reshape(f.shape[0], -1), station_grid(f.shape[1], layout), n_rings)


def _lateral_profile(flat: np.ndarray, pos: np.ndarray, n_rings: int) -> np.ndarray:
    """:func:`lateral_profile` of checked, flattened footprints (N, K) at positions (K, 2)."""
    ring = np.rint(np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 1e-9)[flat.argmax(1)]
    out = np.full((len(flat), n_rings), np.nan)
    for k in range(n_rings):
        mask = ring == k  # (N, n²)
        cnt = mask.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(cnt > 0, (flat * mask).sum(1) / cnt, np.nan)
    return out


def trace_quantile_times(
    traces: np.ndarray, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9), bin_width: float = 25.0
) -> np.ndarray:
    """Times at which the cumulative signal of each trace reaches each quantile q.

    (…, T) → (…, len(q)) in ns: with C_b = Σ_{b' ≤ b} s_b' / Σ s, the time is
    w·(b + (q − C_{b−1}) / (C_b − C_{b−1})) for the first bin b with C_b ≥ q (linear within the
    bin, bin b covering [w b, w(b+1))). NaN for traces without signal.
    """
    s = np.asarray(traces, dtype=np.float64)
    total = s.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.cumsum(s, -1) / total
    out = np.empty((*s.shape[:-1], len(quantiles)))
    for k, q in enumerate(quantiles):
        idx = np.argmax(cum >= q - 1e-12, axis=-1)
        c_hi = np.take_along_axis(cum, idx[..., None], -1)[..., 0]
        prev = np.where(
            idx > 0, np.take_along_axis(cum, np.maximum(idx - 1, 0)[..., None], -1)[..., 0], 0.0
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.clip((q - prev) / (c_hi - prev), 0.0, 1.0)
        out[..., k] = np.where(total[..., 0] > 0, bin_width * (idx + frac), np.nan)
    return out


def _station_features(st: np.ndarray, bin_width: float) -> dict[str, np.ndarray]:
    """(K, T) station traces → integral, peak time, rise and fall time (K,) each."""
    integral = st.sum(-1)
    t10, t50, t90 = np.moveaxis(trace_quantile_times(st, (0.1, 0.5, 0.9), bin_width), -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "log10_integral": np.where(
                integral > 0, np.log10(np.where(integral > 0, integral, 1)), np.nan
            ),
            "peak_time": np.where(integral > 0, bin_width * (st.argmax(-1) + 0.5), np.nan),
            "rise_time": t50 - t10,
            "fall_time": t90 - t50,
        }


def trace_observables(traces: np.ndarray, *, bin_width: float = 25.0) -> dict[str, np.ndarray]:
    """Per-event trace observables, each (N,), from recorded traces (N, n, n, T) in VEM.

    ``log10_integral_total`` = log10 Σ_{k,b} s_kb (NaN if 0); ``n_triggered`` = stations with
    Σ_b s > 0; for the hottest station (largest integral): ``log10_integral``, ``peak_time``
    = centre of the largest bin, ``rise_time`` = t₅₀ − t₁₀ and ``fall_time`` = t₉₀ − t₅₀ of the
    cumulative signal (:func:`trace_quantile_times`), all times in ns.
    """
    tr = _check_events(traces, 4, "traces")
    n = tr.shape[0]
    flat = tr.reshape(n, -1, tr.shape[-1])
    integ = flat.sum(-1)
    total = integ.sum(1)
    hottest = flat[np.arange(n), integ.argmax(1)]
    with np.errstate(divide="ignore"):
        out = {
            "log10_integral_total": np.where(
                total > 0, np.log10(np.where(total > 0, total, 1)), np.nan
            ),
            "n_triggered": (integ > 0).sum(1).astype(np.float64),
        }
    out.update(_station_features(hottest, bin_width))
    return out


def trace_station_observables(
    traces: np.ndarray, *, bin_width: float = 25.0
) -> dict[str, np.ndarray]:
    """The station features of :func:`trace_observables` for **every** station with signal.

    (N, n, n, T) → dict of pooled 1-D arrays (one entry per station with Σ_b s > 0, event-major).
    """
    tr = _check_events(traces, 4, "traces")
    st = tr.reshape(-1, tr.shape[-1])
    return _station_features(st[st.sum(-1) > 0], bin_width)


def rebin_traces(traces: np.ndarray, factor: int = 5) -> np.ndarray:
    """Sum groups of ``factor`` adjacent time bins: (N, n, n, T) → (N, n, n, T // factor)."""
    tr = np.asarray(traces)
    t = tr.shape[-1] // factor * factor
    return tr[..., :t].reshape(*tr.shape[:-1], t // factor, factor).sum(-1)


def feature_matrix(
    features: Mapping[str, np.ndarray],
    names: list[str] | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Stack per-event features into an (N, d) classifier/FPD input (§3.2 "other formats").

    Each feature is standardised with the mean and std of ``reference`` (default: itself);
    NaN (undefined) entries become 0 and each feature that has any NaN in either sample gets
    one indicator column. Returns the matrix and its column names.
    """
    names = list(features) if names is None else names
    ref = features if reference is None else reference
    cols, labels = [], []
    for name in names:
        x = np.asarray(features[name], dtype=np.float64)
        r = np.asarray(ref[name], dtype=np.float64)
        mu, sd = (
            np.nanmean(r) if np.isfinite(r).any() else 0.0,
            np.nanstd(r) if np.isfinite(r).any() else 1.0,
        )
        z = (x - mu) / (sd if sd > 0 else 1.0)
        cols.append(np.where(np.isnan(z), 0.0, z))
        labels.append(name)
        if np.isnan(x).any() or np.isnan(r).any():
            cols.append(np.isnan(x).astype(np.float64))
            labels.append(f"{name}_undefined")
    return np.stack(cols, 1), labels
