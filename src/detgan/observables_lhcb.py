"""LHCb ECAL cluster metrics (``formats_and_metrics.md`` §2.3) and their ``lhcb-2019`` legacy form.

The metrics of the LHCb ECAL WGAN study (Chekalina et al., arXiv:1812.01319) and of the 2019
LHCb calorimeter challenge, written from the geometric definitions of the spec: asymmetries and
widths along and across the particle's projected trajectory, the cluster-centre resolution and
the occupancy at a relative threshold. Images are ``E[n, a, b]`` with the **first image axis
x** (cell centre x_a = a − 14.5, y_b = b − 14.5, cell units). :func:`lhcb_cluster_metrics_legacy`
reproduces the published reference code (§A.3), which treats the second axis as x.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detgan.utils import DetganError

__all__ = [
    "LHCB_ALPHAS",
    "LHCB_LABELS",
    "N_SIDE",
    "Z_SM_MM",
    "lhcb_pitch_mm",
    "expected_centre",
    "relative_occupancy",
    "lhcb_cluster_metrics",
    "lhcb_cluster_metrics_legacy",
    "lhcb_physics_vector",
    "lhcb_family",
]

N_SIDE = 30
#: Shower-maximum depth z_sm of the expected centre (§2.3 item 1) in mm.
Z_SM_MM = 250.0
#: The 50 relative thresholds α_k = 10^(−5 + 5k/49), k = 0 … 49 (§2.3 item 9).
LHCB_ALPHAS = 10.0 ** (-5.0 + 5.0 * np.arange(50) / 49.0)

LHCB_LABELS = {
    "asym_long": "longitudinal asymmetry A_L",
    "asym_trans": "transverse asymmetry A_T",
    "width_long": "longitudinal width σ_L / cells",
    "width_trans": "transverse width σ_T / cells",
    "delta_x": "cluster centre x − expected X / cells",
    "delta_y": "cluster centre y − expected Y / cells",
    "etot_p": "E_tot / |p|",
}

_CENTRES = np.arange(N_SIDE, dtype=np.float64) - 14.5


def _images(images: Any) -> np.ndarray:
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 2 and x.shape[1] == N_SIDE * N_SIDE:
        x = x.reshape(len(x), N_SIDE, N_SIDE)
    if x.ndim == 4 and x.shape[1:3] == (N_SIDE, N_SIDE):
        x = x.sum(3)  # longitudinal sections summed (§1.3)
    if x.ndim != 3 or x.shape[1:] != (N_SIDE, N_SIDE):
        raise DetganError(
            f"LHCb images have shape {x.shape}, expected (N, 30, 30), (N, 900) or (N, 30, 30, L)"
        )
    return x


def lhcb_pitch_mm(meta: dict) -> float:
    """Cell pitch (mm) of an LHCb file: ``meta['pitch_mm']``, else the LHCb ECAL's 20.2 mm."""
    return float(meta.get("pitch_mm", 20.2))


def expected_centre(
    point: Any, momentum: Any, *, pitch: float = 2.02, z_sm: float = 25.0
) -> np.ndarray:
    """Expected cluster centre in cell units (§2.3 item 1), (N, 2|3), (N, 3) → (N, 2).

    X = (x₀ + z_sm p_x/p_z)/pitch, Y = (y₀ + z_sm p_y/p_z)/pitch; ``point``, ``pitch`` and
    ``z_sm`` share one length unit (cm by default: z_sm = 25 cm, pitch 2.02 cm).
    """
    pt = np.asarray(point, np.float64)[:, :2]
    p = np.asarray(momentum, np.float64)
    return (pt + z_sm * p[:, :2] / p[:, 2:3]) / pitch


def relative_occupancy(images: Any, alphas: np.ndarray = LHCB_ALPHAS) -> np.ndarray:
    """S(α) = #{ab : E_ab ≥ α E_tot}/900, (N, 30, 30) → (N, len(alphas)) (§2.3 item 9).

    The LHCb papers call this "sparsity"; project name ``occupancy_rel`` (§2.5).
    """
    x = _images(images).reshape(-1, N_SIDE * N_SIDE)
    out = np.empty((len(x), len(alphas)))
    for i in range(0, len(x), 256):  # (256, 900, 50) booleans per chunk
        c = x[i : i + 256]
        thr = c.sum(1, keepdims=True) * np.asarray(alphas)[None, :]
        out[i : i + 256] = (c[:, :, None] >= thr[:, None, :]).mean(1)
    return out


def _weighted_std(w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """sqrt(max(0, Σ w c²/Σ w − (Σ w c/Σ w)²)) per row; NaN where Σ w = 0."""
    sw = w.sum(1)
    safe = np.where(sw > 0, sw, np.nan)
    mean = (w * c).sum(1) / safe
    return np.sqrt(np.maximum(0.0, (w * c * c).sum(1) / safe - mean**2))


def _asym(e: np.ndarray, forward: np.ndarray, safe_tot: np.ndarray) -> np.ndarray:
    """(Σ_forward E − Σ_rest E)/E_tot."""
    return (np.where(forward, e, -e)).sum(1) / safe_tot


def _geometric(e: np.ndarray, centre: np.ndarray, pxy: np.ndarray) -> dict[str, np.ndarray]:
    """§2.3 items 2–8 on (n, 900) energies, (n, 2) centres P, (n, 2) (p_x, p_y)."""
    norm = np.hypot(pxy[:, 0], pxy[:, 1])
    normal = norm == 0
    u = np.where(normal[:, None], [1.0, 0.0], pxy / np.where(normal, 1.0, norm)[:, None])
    n = np.stack([-u[:, 1], u[:, 0]], 1)
    dx = np.repeat(_CENTRES, N_SIDE)[None, :] - centre[:, :1]  # x_a, a = first axis
    dy = np.tile(_CENTRES, N_SIDE)[None, :] - centre[:, 1:]
    s = dx * u[:, :1] + dy * u[:, 1:]
    t = dx * n[:, :1] + dy * n[:, 1:]
    tot = e.sum(1)
    safe = np.where(tot > 0, tot, np.nan)
    h_n = 0.5 * np.abs(n).sum(1, keepdims=True)
    h_u = 0.5 * np.abs(u).sum(1, keepdims=True)
    return {
        "asym_long": _asym(e, s >= 0, safe),
        "asym_trans": _asym(e, t >= 0, safe),
        "width_long": _weighted_std(np.where(np.abs(t) <= h_n, e, 0.0), s),
        "width_trans": _weighted_std(np.where(np.abs(s) <= h_u, e, 0.0), t),
        "delta_x": (e * (dx + centre[:, :1])).sum(1) / safe - centre[:, 0],
        "delta_y": (e * (dy + centre[:, 1:])).sum(1) / safe - centre[:, 1],
        "normal_incidence": normal.astype(np.float64),
    }


def _chunked(fn, e: np.ndarray, *per_event: np.ndarray, chunk: int = 2000):
    parts = [
        fn(e[i : i + chunk], *(a[i : i + chunk] for a in per_event))
        for i in range(0, len(e), chunk)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _check_conditions(n: int, point: np.ndarray, momentum: np.ndarray) -> None:
    if point.ndim != 2 or point.shape[1] not in (2, 3) or len(point) != n:
        raise DetganError(f"LHCb point has shape {point.shape}, expected ({n}, 3) or ({n}, 2)")
    if momentum.shape != (n, 3):
        raise DetganError(f"LHCb momentum has shape {momentum.shape}, expected ({n}, 3)")
    if np.any(momentum[:, 2] == 0):
        raise DetganError("LHCb momentum has p_z = 0 for some events; the centre is undefined")


def lhcb_cluster_metrics(
    images: Any,
    point: Any,
    momentum: Any,
    *,
    pitch: float = 2.02,
    z_sm: float = 25.0,
) -> dict[str, np.ndarray]:
    """LHCb ECAL cluster metrics of (N, 30, 30) images ``E[n, x, y]`` (§2.3, project convention).

    With P = :func:`expected_centre`, u = (p_x, p_y)/|p_xy|, n = u turned by +90°,
    s = (r − P)·u, t = (r − P)·n per cell centre r (cell units):
    A_L = (Σ_{s≥0} E − Σ_{s<0} E)/E_tot, A_T likewise with t; σ_L = energy-weighted std of s
    over the cells crossed by the trajectory line (|t| ≤ (|n_x| + |n_y|)/2), σ_T = std of t over
    |s| ≤ (|u_x| + |u_y|)/2; ΔX = Σ x E/E_tot − X, ΔY likewise. Returns (N,) arrays keyed as
    :data:`LHCB_LABELS` plus ``occupancy_rel`` (N, 50) and ``normal_incidence`` (1 where
    p_x = p_y = 0 and u = (1, 0) is used). Undefined values (E_tot = 0, empty line) are NaN.
    ``point``/``pitch``/``z_sm`` share a length unit (cm: z_sm = 25, pitch = 2.02).
    """
    e = _images(images).reshape(-1, N_SIDE * N_SIDE)
    pt, p = np.asarray(point, np.float64), np.asarray(momentum, np.float64)
    _check_conditions(len(e), pt, p)
    centre = expected_centre(pt, p, pitch=pitch, z_sm=z_sm)
    out = _chunked(_geometric, e, centre, p[:, :2])
    out["etot_p"] = e.sum(1) / np.linalg.norm(p, axis=1)
    out["occupancy_rel"] = relative_occupancy(e)
    return out


def _legacy(e: np.ndarray, centre: np.ndarray, pxy: np.ndarray) -> dict[str, np.ndarray]:
    """§A.3 on (n, 900) energies: legacy "x" u_b = b − 14.5 (second axis), "y" v_a = a − 14.5."""
    px, py = pxy[:, :1], pxy[:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = np.tile(_CENTRES, N_SIDE)[None, :] - centre[:, :1]  # u_b − X
        vy = np.repeat(_CENTRES, N_SIDE)[None, :] - centre[:, 1:]  # v_a − Y
        tot = e.sum(1)
        safe = np.where(tot > 0, tot, np.nan)
        sign_y = np.where(py > 0, 1.0, -1.0)
        a_l = _asym(e, sign_y * (vy + ux * px / py) >= 0, safe)
        a_t = _asym(e, vy - ux * py / px >= 0, safe)
        k = np.sqrt(1.0 + (py / px) ** 2)
        coord = k * np.tile(_CENTRES, N_SIDE)[None, :]
        h_long = np.where(py < 0, 1.0, -1.0) * (vy - ux * px / py) >= 0
        h_trans = vy + ux * py / px >= 0
        out = {
            "asym_long": a_l,
            "asym_trans": a_t,
            "width_long": _weighted_std(np.where(_boundary(h_long), e, 0.0), coord),
            "width_trans": _weighted_std(np.where(_boundary(h_trans), e, 0.0), coord),
        }
    bad = ((px == 0) | (py == 0))[:, 0]  # the legacy code divides by zero (§A.3 d)
    for v in out.values():
        v[bad] = np.nan
    return out


def _boundary(h: np.ndarray) -> np.ndarray:
    """Cells whose neighbour (a, b+1) or (a+1, b) exists and differs in membership of ``h``."""
    g = h.reshape(-1, N_SIDE, N_SIDE)
    mark = np.zeros_like(g)
    mark[:, :, :-1] |= g[:, :, :-1] != g[:, :, 1:]
    mark[:, :-1, :] |= g[:, :-1, :] != g[:, 1:, :]
    return mark.reshape(len(h), -1)


def lhcb_cluster_metrics_legacy(
    images: Any, point: Any, momentum: Any, *, z_sm: float = 25.0
) -> dict[str, np.ndarray]:
    """The ``lhcb-2019`` legacy metrics (§A.3): the 2019 LHCb challenge reference code.

    The second image axis is taken as x (u_b = b − 14.5), the first as y (v_a = a − 14.5), and
    P from the face point **in cm used as cell units** (no pitch). With σ = sign⁺(p_y):
    A_L from F = {σ (v − Y + (u − X) p_x/p_y) ≥ 0}; A_T from U = {v − Y − (u − X) p_y/p_x ≥ 0};
    σ_L, σ_T = weighted std of k·u_b, k = sqrt(1 + (p_y/p_x)²), over the cells on the boundary of
    the half-planes H_L = {σ' (v − Y − (u − X) p_x/p_y) ≥ 0} (σ' = +1 if p_y < 0 else −1) and
    H_T = {v − Y + (u − X) p_y/p_x ≥ 0}. Events with p_x = 0 or p_y = 0 (where the published
    code divides by zero) are NaN. Returns the four legacy values and ``occupancy_rel`` (S(α) is
    orientation-free and unchanged); the legacy mode changes nothing else.
    """
    e = _images(images).reshape(-1, N_SIDE * N_SIDE)
    pt, p = np.asarray(point, np.float64), np.asarray(momentum, np.float64)
    _check_conditions(len(e), pt, p)
    centre = expected_centre(pt, p, pitch=1.0, z_sm=z_sm)
    out = _chunked(_legacy, e, centre, p[:, :2])
    out["occupancy_rel"] = relative_occupancy(e)
    return out


def lhcb_physics_vector(metrics: dict[str, np.ndarray]) -> np.ndarray:
    """The 54-value physics statistics vector [A_L, A_T, σ_L, σ_T, S(α_0 … α_49)], (N, 54)."""
    cols = [metrics[k][:, None] for k in ("asym_long", "asym_trans", "width_long", "width_trans")]
    return np.concatenate([*cols, metrics["occupancy_rel"]], 1)


#: Relative thresholds shown as 1-D features (k = 0, 10, 20, 29, 39: α ≈ 10⁻⁵ … 10⁻¹).
_SHOWN_K = (0, 10, 20, 29, 39)


def lhcb_family(showers: Any, *, legacy: bool = False) -> Any:
    """:class:`~detgan.comparison.FamilyData` of LHCb ECAL showers (cells (N, 900) MeV, conditions
    ``point`` mm and ``momentum`` MeV, ``meta['pitch_mm']``).

    features: the §2.3 metrics (lengths in cells) and S(α) at five thresholds; high: the 54-value
    physics vector + ΔX, ΔY, E_tot/|p|; low: [log10|p|, p_x/|p|, p_y/|p|, x₀, y₀ (cm), cells/|p|].
    ``legacy`` replaces A_L, A_T, σ_L, σ_T by their ``lhcb-2019`` values (§A.3).
    """
    from detgan.comparison import FamilyData

    cells = np.asarray(showers.cells, np.float64)
    point_mm = np.asarray(showers.conditions["point"], np.float64)
    mom = np.asarray(showers.conditions["momentum"], np.float64)
    pitch = lhcb_pitch_mm(showers.meta)
    m = lhcb_cluster_metrics(cells, point_mm, mom, pitch=pitch, z_sm=Z_SM_MM)
    if legacy:
        m.update(lhcb_cluster_metrics_legacy(cells, point_mm / 10.0, mom))
    feats = {k: m[k] for k in LHCB_LABELS}
    labels = dict(LHCB_LABELS)
    for k in _SHOWN_K:
        feats[f"occupancy_rel_{k}"] = m["occupancy_rel"][:, k]
        labels[f"occupancy_rel_{k}"] = f"fraction of cells ≥ {LHCB_ALPHAS[k]:.1e}·E_tot"
    p = np.linalg.norm(mom, axis=1)
    high = np.concatenate(
        [lhcb_physics_vector(m), np.stack([m["delta_x"], m["delta_y"], m["etot_p"]], 1)], 1
    )
    cond = np.stack([np.log10(p), mom[:, 0] / p, mom[:, 1] / p, *(point_mm[:, :2].T / 10.0)], 1)
    data = FamilyData(
        "lhcb",
        feats,
        np.concatenate([cond, cells / p[:, None]], 1),
        cells,
        cells,
        np.log10(p),
        high=high,
        labels=labels,
    )
    data.images = {
        "mean ECAL image": cells.mean(0).reshape(N_SIDE, N_SIDE),
        "mean occupancy_rel vs log10 alpha": m["occupancy_rel"].mean(0),
    }
    data.meta = {
        "pitch_mm": pitch,
        "normal_incidence": int(m["normal_incidence"].sum()),
        "lhcb_convention": "lhcb-2019 (legacy §A.3)" if legacy else "project (§2.3)",
    }
    return data
