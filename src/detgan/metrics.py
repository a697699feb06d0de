"""Distances between a reference and a candidate sample, each with an uncertainty.

Every function takes plain arrays (reference first, candidate second; sizes may differ) and
returns a small frozen result holding the value, its uncertainty where one is defined, the
sample sizes used and the seed. Definitions follow ``formats_and_metrics.md`` §3: separation
power and binning of the CaloChallenge (arXiv:2410.21611), the calibrated classifier two-sample
test of the same evaluation, FPD/KPD of Kansal et al. (arXiv:2211.10295), per-cell statistics
and correlation-matrix MSE of the ATLAS-cluster WGAN study, and the nearest-neighbour
memorisation check of CaloGAN (arXiv:1712.10321). The classifier two-sample test lives in
:mod:`detgan.classifier` and is re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from detgan.classifier import (
    CLASSIFIER_PRESETS,
    ClassifierResult,
    ClassifierSettings,
    classifier_two_sample_test,
    isotonic_fit,
    roc_auc,
)
from detgan.utils import DetganError

__all__ = [
    "Distance",
    "KSResult",
    "SeparationResult",
    "ClassifierSettings",
    "ClassifierResult",
    "CLASSIFIER_PRESETS",
    "check_samples",
    "wasserstein_1d",
    "ks_test",
    "separation_power",
    "default_bins",
    "CellStatistics",
    "CorrelationResult",
    "MemorisationResult",
    "PRDCResult",
    "cell_statistics",
    "correlation_matrix",
    "correlation_mse",
    "memorisation_check",
    "frechet_physics_distance",
    "kernel_physics_distance",
    "fpd_batch_sizes",
    "prdc",
    "roc_auc",
    "isotonic_fit",
    "classifier_two_sample_test",
]

_EPS_SEP = 1e-16


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Distance:
    """A scalar distance ``value ± error`` between samples of the given sizes."""

    value: float
    error: float
    n_reference: int
    n_candidate: int
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class KSResult:
    """Two-sample Kolmogorov–Smirnov statistic D = sup|F_ref − F_cand| and asymptotic p-value."""

    statistic: float
    pvalue: float
    n_reference: int
    n_candidate: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SeparationResult:
    """Separation power with the out-of-range and undefined counts of both samples (§3.1)."""

    value: float
    underflow_reference: float
    overflow_reference: float
    underflow_candidate: float
    overflow_candidate: float
    undefined_reference: int
    undefined_candidate: int
    n_reference: int
    n_candidate: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- input checks


def check_samples(
    reference: Any,
    candidate: Any,
    *,
    ndim: int | None = None,
    allow_nan: bool = False,
    what: str = "samples",
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Convert both samples to ``dtype`` arrays (no copy if they already are) and refuse empty,
    mismatched or non-finite input.

    ``allow_nan`` admits NaN (an undefined feature, §0.5) but still refuses ±inf.
    """
    ref = np.asarray(reference, dtype=dtype)
    cand = np.asarray(candidate, dtype=dtype)
    for name, a in (("reference", ref), ("candidate", cand)):
        if ndim is not None and a.ndim != ndim:
            raise DetganError(f"{what}: {name} has shape {a.shape}, expected {ndim} dimension(s)")
        if a.size == 0 or (a.ndim and a.shape[0] == 0):
            raise DetganError(f"{what}: {name} sample is empty")
        bad = np.isinf(a) if allow_nan else ~np.isfinite(a)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])[:5].tolist() if a.ndim else [0]
            raise DetganError(
                f"{what}: {name} contains {'inf' if allow_nan else 'NaN or inf'} values "
                f"(first rows {rows}); remove or fix those events"
            )
    if ref.ndim > 1 and ref.shape[1:] != cand.shape[1:]:
        raise DetganError(
            f"{what}: reference has per-event shape {ref.shape[1:]}, candidate {cand.shape[1:]}"
        )
    return ref, cand


def _finite_1d(reference: Any, candidate: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    ref, cand = check_samples(np.ravel(reference), np.ravel(candidate), allow_nan=True, what=what)
    ref, cand = ref[~np.isnan(ref)], cand[~np.isnan(cand)]
    if ref.size == 0 or cand.size == 0:
        raise DetganError(f"{what}: no defined values in one of the samples")
    return ref, cand


# ----------------------------------------------------------------------------- 1-D distances


def _w1_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """W₁ = ∫|F_a − F_b| dx for sorted 1-D samples (exact, piecewise-constant ECDFs)."""
    grid = np.concatenate([a, b])
    grid.sort(kind="mergesort")
    fa = np.searchsorted(a, grid[:-1], side="right") / a.size
    fb = np.searchsorted(b, grid[:-1], side="right") / b.size
    return float(np.sum(np.abs(fa - fb) * np.diff(grid)))


class _W1Bootstrap:
    """W₁ of bootstrap resamples without re-sorting: a resample is a count per original value.

    Both samples are merged and sorted once; a resample drawing indices ``ia`` of ``a`` and
    ``ib`` of ``b`` puts weight 1/n resp. −1/m on the merged positions of the drawn values, and
    F_a − F_b on the merged grid is the cumulative sum of those weights, so each replicate
    costs O(n + m) instead of a sort. Values equal those of sorting ``a[ia]`` and ``b[ib]``.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        grid = np.concatenate([a, b])
        order = np.argsort(grid, kind="mergesort")
        pos = np.empty(grid.size, np.int64)
        pos[order] = np.arange(grid.size)
        self.pos_a, self.pos_b = pos[: a.size], pos[a.size :]
        self.dx = np.diff(grid[order])
        self.weights = np.concatenate(
            [np.full(a.size, 1.0 / a.size), np.full(b.size, -1.0 / b.size)]
        )

    def __call__(self, ia: np.ndarray, ib: np.ndarray) -> float:
        where = np.concatenate([self.pos_a[ia], self.pos_b[ib]])
        diff = np.cumsum(np.bincount(where, self.weights, minlength=self.dx.size + 1)[:-1])
        return float(np.sum(np.abs(diff) * self.dx))  # not @: slow BLAS builds on some CPUs


def wasserstein_1d(
    reference: Any, candidate: Any, *, n_bootstrap: int = 100, seed: int = 0
) -> Distance:
    """1-D Wasserstein distance W₁ = ∫ |F_ref(x) − F_cand(x)| dx with a bootstrap error (§3.1).

    Shapes ``(N,)``, ``(M,)`` (anything is flattened; NaN = undefined values are skipped).
    The error is the standard deviation (ddof = 1) of W₁ over ``n_bootstrap`` resamplings with
    replacement of both samples, drawn from ``numpy.random.default_rng(seed)`` (reference
    indices first, then candidate indices, per resampling).
    """
    ref, cand = _finite_1d(reference, candidate, "wasserstein_1d")
    value = _w1_sorted(np.sort(ref), np.sort(cand))
    rng = np.random.default_rng(seed)
    boot = _W1Bootstrap(ref, cand)
    boots = [
        boot(rng.integers(0, ref.size, ref.size), rng.integers(0, cand.size, cand.size))
        for _ in range(n_bootstrap)
    ]
    error = float(np.std(boots, ddof=1)) if n_bootstrap > 1 else float("nan")
    return Distance(value, error, ref.size, cand.size, seed)


def _kolmogorov_sf(x: float) -> float:
    """Survival function of the Kolmogorov distribution, Q(x) = 2 Σ_j (−1)^{j−1} e^{−2 j² x²}."""
    if x < 0.2:
        return 1.0
    j = np.arange(1, 101)
    return float(min(1.0, max(0.0, 2.0 * np.sum((-1.0) ** (j - 1) * np.exp(-2.0 * j**2 * x**2)))))


def ks_test(reference: Any, candidate: Any) -> KSResult:
    """Two-sample KS statistic D = sup_x |F_ref(x) − F_cand(x)| on the finite values (§3.1).

    p-value: asymptotic Kolmogorov distribution Q((√n_e + 0.12 + 0.11/√n_e)·D) with
    n_e = n m/(n + m) (Stephens' small-sample correction).
    """
    ref, cand = _finite_1d(reference, candidate, "ks_test")
    ref.sort()
    cand.sort()
    grid = np.concatenate([ref, cand])
    d = float(
        np.max(
            np.abs(
                np.searchsorted(ref, grid, side="right") / ref.size
                - np.searchsorted(cand, grid, side="right") / cand.size
            )
        )
    )
    en = math.sqrt(ref.size * cand.size / (ref.size + cand.size))
    return KSResult(d, _kolmogorov_sf((en + 0.12 + 0.11 / en) * d), ref.size, cand.size)


def default_bins(reference: Any, *, n_bins: int = 50, integer: bool | None = None) -> np.ndarray:
    """Bins for a feature without a published binning (§3.1).

    50 uniform bins from min(ref) − 10⁻⁸ to max(ref) + 10⁻⁸; integer-valued features get unit
    bins centred on the integers (``integer=None`` decides from the data).
    """
    ref = np.asarray(reference, dtype=np.float64).ravel()
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.array([0.0, 1.0])
    lo, hi = float(ref.min()), float(ref.max())
    if integer is None:
        integer = bool(np.all(ref == np.round(ref))) and hi - lo <= 500
    if integer:
        return np.arange(math.floor(lo), math.floor(hi) + 2) - 0.5
    return np.linspace(lo - 1e-8, hi + 1e-8, n_bins + 1)


def separation_power(
    reference: Any, candidate: Any, bins: Sequence[float] | np.ndarray | None = None
) -> SeparationResult:
    """Separation power (triangular discrimination, arXiv:2009.03796 eq. 15; §3.1).

    S = ½ Σ_i (p_i − q_i)² / (p_i + q_i + 10⁻¹⁶) with p, q the bin probabilities of the in-range
    entries on identical ``bins`` (default: :func:`default_bins` of the reference). 0 for identical
    histograms, 1 for disjoint ones. Under/overflow fractions and NaN counts are reported; S is
    NaN (with a warning) when a sample has no entry in range.
    """
    ref = np.asarray(reference, dtype=np.float64).ravel()
    cand = np.asarray(candidate, dtype=np.float64).ravel()
    check_samples(ref, cand, allow_nan=True, what="separation_power")
    edges = default_bins(ref) if bins is None else np.asarray(bins, dtype=np.float64)
    stats = []
    for x in (ref, cand):
        undefined = int(np.isnan(x).sum())
        x = x[~np.isnan(x)]
        n = max(x.size, 1)
        counts, _ = np.histogram(x, edges)
        stats.append(
            (counts, float((x < edges[0]).sum() / n), float((x > edges[-1]).sum() / n), undefined)
        )
    (cr, ur, orf, nr), (cc, uc, oc, nc) = stats
    if cr.sum() == 0 or cc.sum() == 0:
        warnings.warn("separation_power: a sample has no entry in the bin range", stacklevel=2)
        value = float("nan")
    else:
        p, q = cr / cr.sum(), cc / cc.sum()
        value = float(0.5 * np.sum((p - q) ** 2 / (p + q + _EPS_SEP)))
    return SeparationResult(value, ur, orf, uc, oc, nr, nc, ref.size, cand.size)


# ----------------------------------------------------------------------------- per-cell statistics


@dataclasses.dataclass(frozen=True)
class CellStatistics:
    """Per-cell means and variances (ddof = 1) of both samples and their ratios (§3.5).

    Ratios are NaN where the reference value is 0. ``log1p_var_diff`` is
    |log(1 + v_cand) − log(1 + v_ref)| per cell (v in squared input units).
    """

    mean_reference: np.ndarray
    mean_candidate: np.ndarray
    var_reference: np.ndarray
    var_candidate: np.ndarray
    mean_ratio: np.ndarray
    var_ratio: np.ndarray
    log1p_var_diff: np.ndarray

    def summary(self) -> dict[str, float]:
        """Scalar summaries: mean/max |Δ log(1+v)|, median and 5 %/95 % of the ratios."""
        out = {
            "log1p_var_diff_mean": float(np.mean(self.log1p_var_diff)),
            "log1p_var_diff_max": float(np.max(self.log1p_var_diff)),
        }
        for name in ("mean_ratio", "var_ratio"):
            r = getattr(self, name)
            r = r[np.isfinite(r)]
            q = np.percentile(r, [5, 50, 95]) if r.size else [float("nan")] * 3
            out.update(
                {
                    f"{name}_p05": float(q[0]),
                    f"{name}_median": float(q[1]),
                    f"{name}_p95": float(q[2]),
                    f"{name}_defined_cells": int(r.size),
                }
            )
        return out


def _mean_var(x: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and variance (ddof = 1) in float64, two passes over row chunks (no float64
    copy of a large float32 array)."""
    total = np.zeros(x.shape[1])
    for i in range(0, len(x), chunk):
        total += x[i : i + chunk].sum(0, dtype=np.float64)
    mean = total / len(x)
    sq = np.zeros(x.shape[1])
    for i in range(0, len(x), chunk):
        sq += ((x[i : i + chunk] - mean) ** 2).sum(0)
    return mean, sq / (len(x) - 1)


def cell_statistics(reference: Any, candidate: Any) -> CellStatistics:
    """Per-cell mean m_c and variance v_c of (N, ...) and (M, ...) cells (flattened per event).

    Returns m_c^cand/m_c^ref, v_c^cand/v_c^ref (NaN where the reference is 0) and
    |log(1 + v_c^cand) − log(1 + v_c^ref)| (Klein's display quantity), each of shape (D,).
    """
    keep = np.float32 if np.asarray(reference).dtype == np.float32 else np.float64
    ref, cand = check_samples(reference, candidate, what="cell_statistics", dtype=keep)
    ref, cand = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
    if min(len(ref), len(cand)) < 2:
        raise DetganError("cell_statistics needs at least 2 events per sample")
    (mr, vr), (mc, vc) = _mean_var(ref), _mean_var(cand)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_ratio = np.where(mr != 0, mc / np.where(mr != 0, mr, 1), np.nan)
        var_ratio = np.where(vr != 0, vc / np.where(vr != 0, vr, 1), np.nan)
    return CellStatistics(
        mr, mc, vr, vc, mean_ratio, var_ratio, np.abs(np.log1p(vc) - np.log1p(vr))
    )


@dataclasses.dataclass(frozen=True)
class CorrelationResult:
    """MSE = (1/d²) Σ (C_ref − C_cand)² and the Frobenius norm of the difference (§3.5)."""

    mse: float
    frobenius: float
    corr_reference: np.ndarray
    corr_candidate: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"mse": self.mse, "frobenius": self.frobenius, "d": int(len(self.corr_reference))}


def correlation_matrix(x: Any) -> np.ndarray:
    """Pearson correlation (d, d) of the columns of (N, d) ``x``; constant columns give 0 rows."""
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(len(x), -1)
    xc = x - x.mean(0)
    sd = np.sqrt((xc**2).mean(0))
    live = sd > 1e-12 * np.maximum(1.0, np.abs(x).max(0))
    z = np.zeros_like(xc)
    z[:, live] = xc[:, live] / sd[live]
    t = torch.from_numpy(z)
    return (t.T @ t).numpy() / len(x)


def correlation_mse(reference: Any, candidate: Any) -> CorrelationResult:
    """Correlation-matrix MSE of (N, d) and (M, d) samples (Klein; ``formats_and_metrics`` §3.5).

    C is the Pearson correlation of each sample (a constant cell gets a zero row and column,
    diagonal included); MSE = (1/d²) Σ_ij (C_ref − C_cand)², plus ‖C_ref − C_cand‖_F.
    """
    ref, cand = check_samples(reference, candidate, what="correlation_mse")
    cr, cc = correlation_matrix(ref), correlation_matrix(cand)
    diff = cr - cc
    return CorrelationResult(float(np.mean(diff**2)), float(np.linalg.norm(diff)), cr, cc)


# ----------------------------------------------------------------------------- neighbours


def _min_distances(x: np.ndarray, pool: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Exact Euclidean distance from each row of x to its nearest row of pool (chunked)."""
    pt = torch.as_tensor(pool, dtype=torch.float64)
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(torch.as_tensor(x[i : i + chunk], dtype=torch.float64), pt)
        out.append(d.min(1).values)
    return torch.cat(out).numpy()


def _kth_radius(x: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row of x (exact, chunked)."""
    xt = torch.as_tensor(x, dtype=torch.float64)
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(xt[i : i + chunk], xt)
        out.append(torch.topk(d, k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out).numpy()


@dataclasses.dataclass(frozen=True)
class MemorisationResult:
    """Nearest-training-event distances of generated vs held-out events (§3.6)."""

    median_ratio: float
    fraction_below_p01: float
    n_copies: int
    ks_statistic: float
    n: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def memorisation_check(
    train: Any, held_out: Any, generated: Any, *, n: int = 10000, seed: int = 0
) -> MemorisationResult:
    """Memorisation check: does G sit closer to the training set T than held-out data H does?

    Shapes (N_T, D), (N_H, D), (N_G, D). H and G are subsampled to the same size
    (≤ ``n``, seeded); d_T(z) = min_t ‖z − t‖. Reports median d_T(G)/median d_T(H) (≈ 1 without
    memorisation, ≪ 1 with), the fraction of G below the 1st percentile of d_T(H) (≈ 0.01),
    the number of copies (d_T(g) ≤ 10⁻⁶ median d_T(H)) and the KS statistic of the two sets.
    """
    t = np.asarray(train, np.float64).reshape(len(train), -1)
    h, g = check_samples(held_out, generated, what="memorisation_check")
    h, g = h.reshape(len(h), -1), g.reshape(len(g), -1)
    rng = np.random.default_rng(seed)
    m = min(n, len(h), len(g))
    h, g = h[rng.permutation(len(h))[:m]], g[rng.permutation(len(g))[:m]]
    dh, dg = _min_distances(h, t), _min_distances(g, t)
    med_h = float(np.median(dh))
    ratio = float(np.median(dg) / med_h) if med_h > 0 else float("nan")
    return MemorisationResult(
        ratio,
        float(np.mean(dg < np.percentile(dh, 1))),
        int(np.sum(dg <= 1e-6 * med_h)),
        ks_test(dh, dg).statistic,
        m,
        seed,
    )


@dataclasses.dataclass(frozen=True)
class PRDCResult:
    """Precision, recall, density and coverage (Naeem et al. 2020; §3.4)."""

    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    n_reference: int
    n_candidate: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prdc(reference: Any, candidate: Any, *, k: int = 5, chunk: int = 2048) -> PRDCResult:
    """PRDC of (N, D) reference X and (M, D) candidate Y with exact k-NN radii r_k (§3.4).

    precision = mean_j 1[∃i: d(X_i, Y_j) < r_k(X_i)];
    recall = mean_i 1[∃j: d(X_i, Y_j) < r_k(Y_j)];
    density = (1/kM) Σ_j Σ_i 1[d(X_i, Y_j) < r_k(X_i)];
    coverage = mean_i 1[min_j d(X_i, Y_j) < r_k(X_i)].
    """
    x, y = check_samples(reference, candidate, what="prdc")
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    rx = torch.as_tensor(_kth_radius(x, k, chunk))
    ry = torch.as_tensor(_kth_radius(y, k, chunk))
    yt = torch.as_tensor(y, dtype=torch.float64)
    hits_y = torch.zeros(len(y), dtype=torch.float64)
    recall_x, cover_x = [], []
    for i in range(0, len(x), chunk):
        d = torch.cdist(torch.as_tensor(x[i : i + chunk], dtype=torch.float64), yt)  # (c, M)
        inside = d < rx[i : i + chunk, None]
        hits_y += inside.double().sum(0)
        recall_x.append((d < ry[None, :]).any(1))
        cover_x.append(d.min(1).values < rx[i : i + chunk])
    return PRDCResult(
        float((hits_y > 0).double().mean()),
        float(torch.cat(recall_x).double().mean()),
        float(hits_y.sum() / (k * len(y))),
        float(torch.cat(cover_x).double().mean()),
        k,
        len(x),
        len(y),
    )


# ----------------------------------------------------------------------------- FPD / KPD


def _max_abs_normalise(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(x).max(0)
    scale[scale == 0] = 1.0
    return x / scale, y / scale


def _cov(xc: np.ndarray) -> np.ndarray:
    """Unbiased covariance of centred rows; torch matmul (honours torch's thread setting)."""
    t = torch.from_numpy(np.ascontiguousarray(xc))
    return (t.T @ t).numpy() / (len(xc) - 1)


def _frechet(x: np.ndarray, y: np.ndarray) -> float:
    """FD = ‖μx − μy‖² + Tr(Σx + Σy − 2 (Σx Σy)^{1/2}).

    Tr (Σx Σy)^{1/2} = Σ_i sqrt(λ_i) with λ_i the eigenvalues of Σx Σy, which are those of
    the symmetric matrix Σx^{1/2} Σy Σx^{1/2}: two symmetric eigendecompositions (torch) instead
    of a general non-symmetric one (≈ 40× faster at d = 362). Negative round-off eigenvalues
    count 0, as dropping the imaginary part of the principal square root does.
    """
    mx, my = x.mean(0), y.mean(0)
    sx, sy = (torch.from_numpy(_cov(c)) for c in (x - mx, y - my))
    for jitter in (0.0, 1e-6):
        eye = jitter * torch.eye(len(sx), dtype=sx.dtype)
        w, v = torch.linalg.eigh(sx + eye)
        root = (v * w.clamp(min=0).sqrt()) @ v.T
        lam = torch.linalg.eigvalsh(root @ (sy + eye) @ root)
        tr_root = float(lam.clamp(min=0).sqrt().sum())
        fd = float(np.sum((mx - my) ** 2) + sx.trace() + sy.trace() - 2 * tr_root)
        if math.isfinite(fd):
            return fd
    return float("nan")


def fpd_batch_sizes(n_min: int = 10000, n_max: int = 50000, k: int = 10) -> np.ndarray:
    """N_k = ⌊1 / (1/N_min + k (1/N_max − 1/N_min)/(K − 1))⌋, k = 0 … K−1 (§3.3)."""
    # np.linspace reproduces the published rounding (49999, not 50000, for N_max = 50000)
    return (1.0 / np.linspace(1.0 / n_min, 1.0 / n_max, k)).astype(int)


def frechet_physics_distance(
    reference: Any,
    candidate: Any,
    *,
    n_min: int = 10000,
    n_max: int = 50000,
    n_sizes: int = 10,
    n_bootstrap: int = 20,
    normalise: bool = True,
    seed: int = 42,
) -> Distance:
    """Fréchet physics distance, extrapolated to infinite N (Kansal et al., arXiv:2211.10295).

    (N, d) and (M, d) features, normalised by the reference column max |x| (``normalise``).
    For each batch size N_k (:func:`fpd_batch_sizes`) average FD over ``n_bootstrap`` draws with
    replacement, fit FD̄(N) = a + b/N with a, b ≥ 0; FPD = a, error = standard error of a
    (residual variance SSR/(K − 2)). Not multiplied by 10³ here.
    """
    x, y = check_samples(reference, candidate, ndim=2, what="frechet_physics_distance")
    if normalise:
        x, y = _max_abs_normalise(x, y)
    rng = np.random.default_rng(seed)
    sizes = fpd_batch_sizes(n_min, n_max, n_sizes)
    means = np.array(
        [
            np.mean(
                [
                    _frechet(x[rng.integers(0, len(x), nk)], y[rng.integers(0, len(y), nk)])
                    for _ in range(n_bootstrap)
                ]
            )
            for nk in sizes
        ]
    )
    a, err = _fit_intercept(1.0 / sizes, means)
    return Distance(a, err, len(x), len(y), seed)


def _fit_intercept(u: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    """Least squares f = a + b u with a, b ≥ 0; returns (a, standard error of a)."""
    design = np.stack([np.ones_like(u), u], 1)
    coef = np.linalg.lstsq(design, f, rcond=None)[0]
    if coef[1] < 0:  # constrained optimum on the b = 0 face
        coef = np.array([f.mean(), 0.0])
    if coef[0] < 0:  # on the a = 0 face
        coef = np.array([0.0, max(0.0, float(u @ f / (u @ u)))])
    ssr = float(np.sum((design @ coef - f) ** 2))
    cov = ssr / max(len(u) - 2, 1) * np.linalg.inv(design.T @ design)
    return float(coef[0]), float(math.sqrt(max(cov[0, 0], 0.0)))


def _mmd2_poly(x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)⁴, in row blocks small enough to stay in cache."""
    d = x.shape[1]
    one = torch.ones((), dtype=x.dtype)

    def ksum(a: torch.Tensor, b: torch.Tensor, same: bool) -> float:
        total = 0.0
        for i in range(0, len(a), chunk):
            z = torch.addmm(one, a[i : i + chunk], b.T, alpha=1.0 / d)  # a·b/d + 1
            total += float(z.square_().square_().sum())
        if same:
            total -= float(((a * a).sum(1) / d + 1.0).square().square().sum())
        return total

    m, n = len(x), len(y)
    return (
        ksum(x, x, True) / (m * (m - 1))
        + ksum(y, y, True) / (n * (n - 1))
        - 2.0 * ksum(x, y, False) / (m * n)
    )


def kernel_physics_distance(
    reference: Any,
    candidate: Any,
    *,
    n_batches: int = 10,
    batch_size: int = 10000,
    normalise: bool = True,
    seed: int = 42,
) -> Distance:
    """Kernel physics distance: median unbiased MMD² over batches (arXiv:2211.10295; §3.3).

    Batch i draws ``batch_size`` rows of each sample with replacement (seed + 1000 i); kernel
    (x·y/d + 1)⁴. Value = median, error = half the 16.275–83.725 percentile range.
    """
    x, y = check_samples(reference, candidate, ndim=2, what="kernel_physics_distance")
    if normalise:
        x, y = _max_abs_normalise(x, y)
    vals = []
    for i in range(n_batches):
        rng = np.random.default_rng(seed + 1000 * i)
        xb = torch.as_tensor(x[rng.integers(0, len(x), batch_size)])
        yb = torch.as_tensor(y[rng.integers(0, len(y), batch_size)])
        vals.append(_mmd2_poly(xb, yb))
    lo, hi = np.percentile(vals, [16.275, 83.725])
    return Distance(float(np.median(vals)), float((hi - lo) / 2), len(x), len(y), seed)
