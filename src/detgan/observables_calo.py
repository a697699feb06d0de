"""Calorimeter shower observables: CaloChallenge, CaloGAN and ATLAS-cluster features.

Definitions are ``formats_and_metrics.md`` §2 exactly: the CaloChallenge 2022 high-level
features and classifier inputs (arXiv:2410.21611), the CaloGAN shower shapes (Paganini et al.,
arXiv:1712.10321) and the ATLAS 89-cell variables of the dense WGAN study (Klein). Inputs are
plain arrays in MeV and mm plus a binning (any object with ``layers`` whose items have
``r_edges`` and ``n_alpha``, e.g. :class:`detgan.sim.geometry.CaloChallengeBinning`, or a
sequence of ``(r_edges, n_alpha)`` pairs). All features are float64, (N,) per event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detgan.utils import DetganError

__all__ = [
    "apply_threshold",
    "layer_table",
    "calochallenge_features",
    "calochallenge_cls_high",
    "calochallenge_cls_low",
    "calochallenge_bins",
    "response_per_energy",
    "layer_energy_correlation",
    "calogan_features",
    "atlas_features",
    "ATLAS_LAYERS",
    "ATLAS_CORE",
    "ATLAS_THRESHOLDS",
    "atlas_threshold",
    "grid_features",
    "load_calo_family",
    "calochallenge_text_files",
    "calo_labels",
]

EPS_CC = 1e-16
EPS_CALOGAN = 1e-6


def apply_threshold(cells: np.ndarray, e_min: float, dtype: Any = np.float64) -> np.ndarray:
    """Voxels with E < E_min set to 0 (E = E_min kept; negatives zeroed), as ``dtype`` (§1.1.6).

    The comparison is made in float64 whatever the dtype, so a float32 file is thresholded
    exactly as its float64 conversion would be."""
    x = np.asarray(cells)
    return np.where(x < np.float64(e_min), 0.0, x).astype(dtype, copy=False)


def layer_table(binning: Any) -> list[dict[str, Any]]:
    """Per layer slot: id, flat slice, radial centres (n_r,), α centres (n_α,), η/φ/r per voxel.

    Voxel order within a layer is α-major, r fastest (§1.1.4); η = r_c cos α, φ = r_c sin α
    with α_j = −π + (j + ½) 2π/n_α. Empty slots (n_r = 0) are listed with ``empty=True``.
    """
    layers = getattr(binning, "layers", binning)
    out, offset = [], 0
    for slot, layer in enumerate(layers):
        edges, n_alpha = (layer.r_edges, layer.n_alpha) if hasattr(layer, "r_edges") else layer
        edges = np.asarray(edges, dtype=np.float64)
        n_r = len(edges) - 1
        r_c = 0.5 * (edges[:-1] + edges[1:])
        alpha = -np.pi + (np.arange(n_alpha) + 0.5) * 2 * np.pi / n_alpha
        rr, aa = np.meshgrid(r_c, alpha)
        size = n_r * n_alpha
        out.append(
            {
                "id": getattr(layer, "id", slot),
                "slot": slot,
                "empty": n_r == 0,
                "slice": slice(offset, offset + size),
                "n_alpha": int(n_alpha),
                "n_r": n_r,
                "r": rr.ravel(),
                "eta": (rr * np.cos(aa)).ravel(),
                "phi": (rr * np.sin(aa)).ravel(),
            }
        )
        offset += size
    return out


def _moments(e: np.ndarray, el: np.ndarray, coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre Σ E c / (E_l + ε) and width sqrt(max(0, Σ E c² / (E_l + ε) − centre²))."""
    centre = e @ coord / (el + EPS_CC)
    width = np.sqrt(np.maximum(0.0, e @ coord**2 / (el + EPS_CC) - centre**2))
    return centre, width


def calochallenge_features(
    cells: np.ndarray, e_inc: np.ndarray, binning: Any
) -> dict[str, np.ndarray]:
    """CaloChallenge high-level features of thresholded voxels (N, V) and E_inc (N,) MeV (§2.1).

    Keys: ``etot``, ``etot_einc`` = E_tot/E_inc; per relevant layer l (by slot id):
    ``e_layer_l``, ``ec_r_l``, ``width_r_l``, ``sparsity_l`` (fraction of zero voxels),
    ``occupancy_l``; per α-binned layer: ``ec_eta_l``, ``ec_phi_l``, ``width_eta_l``,
    ``width_phi_l`` (mm, ε = 10⁻¹⁶ MeV so an empty layer gives 0).
    """
    x = np.asarray(cells)  # converted to float64 layer by layer (no full float64 copy)
    e_inc = np.asarray(e_inc, dtype=np.float64).reshape(-1)
    table = layer_table(binning)
    n_vox = table[-1]["slice"].stop
    if x.ndim != 2 or x.shape[1] != n_vox or len(x) != len(e_inc):
        raise DetganError(
            f"showers have shape {x.shape} with {len(e_inc)} energies; the binning "
            f"expects (N, {n_vox})"
        )
    etot = np.zeros(len(x))
    out = {"etot": etot, "etot_einc": etot}
    for lay in table:
        if lay["empty"]:
            continue
        e, k = np.asarray(x[:, lay["slice"]], np.float64), lay["id"]
        el = e.sum(1)
        out[f"e_layer_{k}"] = el
        if lay["n_alpha"] > 1:
            out[f"ec_eta_{k}"], out[f"width_eta_{k}"] = _moments(e, el, lay["eta"])
            out[f"ec_phi_{k}"], out[f"width_phi_{k}"] = _moments(e, el, lay["phi"])
        out[f"ec_r_{k}"], out[f"width_r_{k}"] = _moments(e, el, lay["r"])
        out[f"sparsity_{k}"] = 1.0 - (e > 0).sum(1) / e.shape[1]
        out[f"occupancy_{k}"] = 1.0 - out[f"sparsity_{k}"]
        etot += el  # layers in flat order: the same sum as over all voxels
    out["etot_einc"] = etot / e_inc
    return out


def calochallenge_cls_high(
    features: Mapping[str, np.ndarray], e_inc: np.ndarray, binning: Any
) -> np.ndarray:
    """The ``cls-high`` vector (§3.2), (N, 1 + 2L + 4A + 1 + 3L) with blocks in this order:
    log10 E_inc; log10(E_l + 10⁻⁸); EC_η/100; EC_φ/100; W_η/100; W_φ/100 (α-binned layers);
    log10(E_tot + 10⁻⁸); s_l; EC_r/100; W_r/100 (relevant layers), layers ascending."""
    table = [lay for lay in layer_table(binning) if not lay["empty"]]
    rel = [lay["id"] for lay in table]
    alpha = [lay["id"] for lay in table if lay["n_alpha"] > 1]
    cols = [np.log10(np.asarray(e_inc, np.float64).reshape(-1))]
    cols += [np.log10(features[f"e_layer_{k}"] + 1e-8) for k in rel]
    for key in ("ec_eta", "ec_phi", "width_eta", "width_phi"):
        cols += [features[f"{key}_{k}"] / 100.0 for k in alpha]
    cols.append(np.log10(features["etot"] + 1e-8))
    cols += [features[f"sparsity_{k}"] for k in rel]
    cols += [features[f"ec_r_{k}"] / 100.0 for k in rel]
    cols += [features[f"width_r_{k}"] / 100.0 for k in rel]
    return np.stack(cols, 1)


def calochallenge_cls_low(
    cells: np.ndarray, e_inc: np.ndarray, dtype: Any = np.float64
) -> np.ndarray:
    """The ``cls-low`` vector [log10(E_inc/MeV), E_v/E_inc …] of thresholded voxels, (N, V + 1),
    computed in float64 and stored as ``dtype``."""
    e_inc = np.asarray(e_inc, np.float64).reshape(-1, 1)
    out = np.empty((len(e_inc), np.shape(cells)[1] + 1), dtype)
    out[:, 0] = np.log10(e_inc[:, 0])
    np.divide(cells, e_inc, out=out[:, 1:], casting="unsafe")
    return out


def calochallenge_bins(
    name: str, dataset: str, e_min: float, reference: np.ndarray | None = None
) -> np.ndarray | None:
    """The published bins of a CaloChallenge feature (§3.1); None where there is none.

    E_l and voxel energies: 40 resp. 50 log-spaced edges from E_min to the reference maximum
    (None if that maximum is ≤ E_min). Ranges of EC and widths depend on dataset and layer.
    """
    key, _, layer = name.rpartition("_")
    ds1 = dataset.startswith("1")
    lid = int(layer) if layer.isdigit() else -1
    if name == "etot_einc":
        return np.linspace(0.5, 1.5, 101)
    if key in ("e_layer", "voxel") or name == "voxel_energy":
        top = float(np.nanmax(reference)) if reference is not None and np.size(reference) else 0.0
        n = 50 if name == "voxel_energy" else 40
        return np.logspace(math.log10(e_min), math.log10(top), n) if top > e_min > 0 else None
    if key in ("sparsity", "occupancy"):
        return np.linspace(0, 1, 21)
    ranges = {
        "ec_eta": (30, 500, 100, True),
        "ec_phi": (30, 500, 100, True),
        "width_eta": (30, 400, 100, False),
        "width_phi": (30, 400, 100, False),
        "ec_r": (42, 1500, 500, False),
        "width_r": (20, 1500, 500, False),
    }
    if key not in ranges:
        return None
    small, wide, other, symmetric = ranges[key]
    wide_layers = (
        (12, 13) if key in ("ec_eta", "ec_phi", "width_eta", "width_phi") else (12, 13, 14)
    )
    hi = (wide if lid in wide_layers else other) if ds1 else small
    return np.linspace(-hi if symmetric else 0.0, hi, 101)


def response_per_energy(
    response: np.ndarray, e_inc: np.ndarray, dataset: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """E_tot/E_inc per incident energy for dataset 1 (§3.1): events with E_inc ∈ [2^k, 2^(k+1))
    MeV, k = 8 … 22, as pooled arrays ``etot_einc_at_<2^k>`` with their event owners, and bins:
    20 on [0.4, 1.4], for photons from 4096 MeV on 20 on [0.9, 1.1]."""
    e_inc = np.asarray(e_inc, np.float64).reshape(-1)
    pooled, bins = {}, {}
    for k in range(8, 23):
        rows = np.nonzero((e_inc >= 2.0**k) & (e_inc < 2.0 ** (k + 1)))[0]
        if not rows.size:
            continue
        key = f"etot_einc_at_{2**k}"
        pooled[key], pooled[f"_owner_{key}"] = response[rows], rows.astype(np.int32)
        narrow = "photon" in str(dataset) and k >= 12
        bins[key] = np.linspace(0.9, 1.1, 21) if narrow else np.linspace(0.4, 1.4, 21)
    return pooled, bins


def layer_energy_correlation(features: Mapping[str, np.ndarray], binning: Any) -> np.ndarray:
    """(N, L) matrix of the layer energies E_l, relevant layers ascending (input of §3.5)."""
    ids = [lay["id"] for lay in layer_table(binning) if not lay["empty"]]
    return np.stack([features[f"e_layer_{k}"] for k in ids], 1)


# ----------------------------------------------------------------------------- CaloGAN


def calogan_features(images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """CaloGAN shower shapes of the three layer images I_i (N, n_x, n_y) in MeV (§2.2).

    E_i, Ê_tot = ΣE_i, f_i = E_i/Ê_tot, l_d = E_1 + 2E_2, s_d = l_d/Ê_tot,
    σ_sd = sqrt(max(0, (E_1 + 4E_2)/Ê_tot − s_d²)) (undefined for Ê_tot = 0); lateral width
    σ_i along the first axis, x_a = −240 + (a + ½)·480/n_x mm, ε = 10⁻⁶ MeV; E_ratio,i of the
    two largest cells; max depth d; ``occupancy_i`` (CaloGAN "sparsity") and ``sparsity_i``.
    """
    if len(images) != 3:
        raise DetganError(f"CaloGAN features need 3 layer images, got {len(images)}")
    out: dict[str, np.ndarray] = {}
    energies = []
    for i, img in enumerate(images):
        im = np.asarray(img, np.float64)
        flat = im.reshape(len(im), -1)
        e = flat.sum(1)
        energies.append(e)
        x = -240.0 + (np.arange(im.shape[1]) + 0.5) * 480.0 / im.shape[1]
        row = im.sum(2)  # (N, n_x): energy per row a
        mean = row @ x / (e + EPS_CALOGAN)
        out[f"e_{i}"] = e
        out[f"lateral_width_{i}"] = np.sqrt(
            np.maximum(0.0, row @ x**2 / (e + EPS_CALOGAN) - mean**2)
        )
        top = -np.sort(-flat, axis=1)[:, :2]
        out[f"e_ratio_{i}"] = (top[:, 0] - top[:, 1]) / (top[:, 0] + top[:, 1] + EPS_CALOGAN)
        out[f"occupancy_{i}"] = (flat > 0).mean(1)
        out[f"sparsity_{i}"] = 1.0 - out[f"occupancy_{i}"]
    e0, e1, e2 = energies
    tot = e0 + e1 + e2
    safe = np.where(tot > 0, tot, np.nan)
    out["e_tot"] = tot
    for i, e in enumerate(energies):
        out[f"frac_{i}"] = e / safe
    out["lateral_depth"] = e1 + 2 * e2
    out["shower_depth"] = (e1 + 2 * e2) / safe
    out["shower_depth_width"] = np.sqrt(
        np.maximum(0.0, (e1 + 4 * e2) / safe - out["shower_depth"] ** 2)
    )
    out["max_depth"] = np.where(e2 != 0, 2.0, np.where(e1 != 0, 1.0, 0.0))
    return out


# ----------------------------------------------------------------------------- ATLAS cluster

#: Flat index ranges of the 89-cell layers (§1.4) and the 3 × 3 core of the Middle layer.
ATLAS_LAYERS = {"middle": (0, 21), "strip": (21, 69), "presampler": (69, 75), "back": (75, 89)}
ATLAS_CORE = (2, 3, 4, 9, 10, 11, 16, 17, 18)
ATLAS_THRESHOLDS = {"middle": 200.0, "strip": 60.0, "presampler": 120.0, "back": 200.0}


def atlas_threshold(cells: np.ndarray) -> np.ndarray:
    """Per-layer noise thresholds of §1.4 (E < threshold → 0) on (N, 89) cells, float64."""
    x = np.asarray(cells, np.float64).copy()
    for name, (a, b) in ATLAS_LAYERS.items():
        x[:, a:b] = np.where(x[:, a:b] < ATLAS_THRESHOLDS[name], 0.0, x[:, a:b])
    return x


def atlas_features(
    cells: np.ndarray, cell_eta: np.ndarray, cell_phi: np.ndarray, *, legacy: bool = False
) -> dict[str, np.ndarray]:
    """ATLAS 89-cell variables (Klein; §2.4) of thresholded cells (N, 89) in MeV.

    ``cell_eta``/``cell_phi`` (N, 89) or (89,); offsets Δη = η − η_10, Δφ = φ − φ_10 wrapped
    into (−π, π]. Keys: ``e_tot``, ``e_<layer>``, ``frac_<layer>``, ``r_mid`` = E(3×3)/E(3×7),
    ``mean_eta_<layer>``, ``mean_phi_<layer>``, ``width_eta_<layer>``, ``width_phi_<layer>``
    (energy-weighted standard deviations with each layer's own energy; undefined (NaN) for an
    empty layer). ``legacy=True`` gives the published widths (§A.4): w² for PS, Strip, Middle
    and w_Back² (E_Back/E_Middle)², computed on absolute coordinates.
    """
    x = np.asarray(cells, np.float64)
    eta = np.broadcast_to(np.asarray(cell_eta, np.float64), x.shape)
    phi = np.broadcast_to(np.asarray(cell_phi, np.float64), x.shape)
    deta = eta - eta[:, 10:11]
    dphi = np.angle(np.exp(1j * (phi - phi[:, 10:11])))
    if legacy:
        deta, dphi = eta, phi
    tot = x.sum(1)
    out = {"e_tot": tot}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, (a, b) in ATLAS_LAYERS.items():
            e = x[:, a:b]
            el = e.sum(1)
            safe = np.where(el > 0, el, np.nan)
            out[f"e_{name}"] = el
            out[f"frac_{name}"] = el / np.where(tot > 0, tot, np.nan)
            for axis, c in (("eta", deta[:, a:b]), ("phi", dphi[:, a:b])):
                mean = (e * c).sum(1) / safe
                out[f"mean_{axis}_{name}"] = mean
                out[f"width_{axis}_{name}"] = np.sqrt(
                    np.maximum(0.0, (e * c**2).sum(1) / safe - mean**2)
                )
        mid = out["e_middle"]
        out["r_mid"] = x[:, list(ATLAS_CORE)].sum(1) / np.where(mid > 0, mid, np.nan)
        if legacy:
            for axis in ("eta", "phi"):
                for name in ATLAS_LAYERS:
                    out[f"width_{axis}_{name}"] = out[f"width_{axis}_{name}"] ** 2
                out[f"width_{axis}_back"] *= (out["e_back"] / np.where(mid > 0, mid, np.nan)) ** 2
    return out


def grid_features(cells: np.ndarray, energy: np.ndarray, layout: Any) -> dict[str, np.ndarray]:
    """Generic features of any grid layout: E_tot/E, per layer E_l, centres and widths along
    both axes (mm, undefined for an empty layer) and occupancy (used for LHCb images)."""
    x = np.asarray(cells, np.float64)
    out = {"etot_e": x.sum(1) / np.asarray(energy, np.float64)}
    xs, ys = layout.cell_centres()
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, name in enumerate(layout.layer_names):
            sl = layout.layer_slice(k)
            e = x[:, sl]
            el = e.sum(1)
            safe = np.where(el > 0, el, np.nan)
            out[f"e_{name}"] = el
            for axis, c in (("x", xs[sl]), ("y", ys[sl])):
                mean = e @ c / safe
                out[f"centre_{axis}_{name}"] = mean
                out[f"width_{axis}_{name}"] = np.sqrt(np.maximum(0.0, e @ c**2 / safe - mean**2))
            out[f"occupancy_{name}"] = (e > 0).mean(1)
    return out


# ----------------------------------------------------------------------------- labels

#: key pattern → axis label (unit after " / "); ``{}`` is the layer; first match wins
_LABEL_PATTERNS = (
    ("etot_einc_at_", "E_tot / E_inc at E_inc = {} MeV"),
    ("etot_einc", "E_tot / E_inc"),
    ("etot_e", "E_tot / E"),
    ("etot", "E_tot / MeV"),
    ("e_tot", "E_tot / MeV"),
    ("e_layer_", "E layer {} / MeV"),
    ("ec_eta_", "EC_η layer {} / mm"),
    ("ec_phi_", "EC_φ layer {} / mm"),
    ("ec_r_", "EC_r layer {} / mm"),
    ("width_eta_", "W_η layer {} / mm"),
    ("width_phi_", "W_φ layer {} / mm"),
    ("width_r_", "W_r layer {} / mm"),
    ("sparsity_", "sparsity layer {} (fraction of empty cells)"),
    ("occupancy_", "occupancy layer {} (fraction of cells hit)"),
    ("voxel_energy", "voxel energy / MeV"),
    ("frac_", "E layer {} / E_tot"),
    ("lateral_width_", "lateral width layer {} / mm"),
    ("lateral_depth", "lateral depth E_1 + 2E_2 / MeV"),
    ("shower_depth_width", "shower-depth width"),
    ("shower_depth", "shower depth"),
    ("e_ratio_", "E_ratio layer {} (two hottest cells)"),
    ("max_depth", "deepest layer with energy"),
    ("r_mid", "E(3×3) / E(3×7), middle layer"),
    ("mean_eta_", "⟨Δη⟩ {}"),
    ("mean_phi_", "⟨Δφ⟩ {} / rad"),
    ("e_", "E {} / MeV"),
)


def calo_labels(keys: Sequence[str], family: str = "calochallenge") -> dict[str, str]:
    """Axis labels with units for calorimeter feature keys (CaloChallenge, CaloGAN, ATLAS);
    ATLAS widths are in η resp. φ units, not mm."""
    out = {}
    for key in keys:
        for prefix, text in _LABEL_PATTERNS:
            if key.startswith(prefix):
                rest = key[len(prefix) :]
                label = text.format(f"layer {rest}" if prefix == "e_" and rest.isdigit() else rest)
                if family == "atlas" and key.startswith("width_"):  # (η, φ), not mm
                    axis = "η" if "eta" in key else "φ / rad"
                    label = f"w_{axis} {rest}" if axis == "η" else f"w_φ {rest} / rad"
                out[key] = label
                break
    return out


# ----------------------------------------------------------------------------- evaluation glue


def load_calo_family(path: Any, kind: str, settings: Any) -> Any:
    """Load a showers file and build the :class:`~detgan.comparison.FamilyData` of its family."""
    from detgan.io.showers import load_showers

    fmt = None if kind in ("auto", "calo") else kind
    stop = settings.max_events or None
    showers = load_showers(path, fmt, stop=stop)
    return showers_family(showers, legacy=tuple(getattr(settings, "legacy", ())))


def showers_family(showers: Any, *, legacy: tuple[str, ...] = ()) -> Any:
    """FamilyData of a :class:`~detgan.io.showers.Showers` object (CaloChallenge, CaloGAN,
    ATLAS cluster, LHCb ECAL, or any other grid with generic features). ``legacy`` holds the
    active §A switches (``klein-width``, ``lhcb-2019`` matter here)."""
    from detgan.comparison import FamilyData

    layout, energy = showers.layout, np.asarray(showers.energy, np.float64)
    # cells keep the file's precision and the classifier input its training precision, so a
    # 20 000-event CaloChallenge dataset-2 sample needs ~1 GB instead of ~2 GB per copy
    store = np.float32 if showers.cells.dtype == np.float32 else np.float64
    low_dtype = np.float64 if "float64" in legacy else np.float32
    cond = np.log10(energy)
    name = getattr(layout, "name", "")
    if name == "lhcb-ecal" and "point" in showers.conditions:
        from detgan.observables_lhcb import lhcb_family

        return lhcb_family(showers, legacy="lhcb-2019" in legacy)
    if getattr(layout, "kind", "") == "calochallenge":
        e_min = float(showers.meta.get("e_min", getattr(layout, "e_min", 0.0)) or 0.0)
        cells = apply_threshold(showers.cells, e_min, store)  # lossless: only zeroes voxels
        feats = calochallenge_features(cells, energy, layout)
        low = calochallenge_cls_low(cells, energy, low_dtype)
        data = FamilyData(
            "calochallenge",
            feats,
            low,
            cells,
            layer_energy_correlation(feats, layout),
            cond,
            high=calochallenge_cls_high(feats, energy, layout),
        )
        flat = np.flatnonzero(cells > 0)
        nz = cells.reshape(-1)[flat]
        rows = flat // cells.shape[1]
        del flat
        data.pooled = {"voxel_energy": nz, "_owner_voxel_energy": rows.astype(np.int32)}
        data.bins = {
            k: b
            for k in [*feats, "voxel_energy"]
            if (b := calochallenge_bins(k, layout.dataset, e_min, feats.get(k, nz))) is not None
        }
        if str(layout.dataset).startswith("1"):
            per_e, bins = response_per_energy(feats["etot_einc"], energy, layout.dataset)
            data.pooled.update(per_e)
            data.bins.update(bins)
        data.meta = {"dataset": layout.dataset, "e_min": e_min}
        data.labels = calo_labels([*feats, *data.pooled])
        data.images = {"mean energy per layer": layer_energy_correlation(feats, layout).mean(0)}
        return data
    if name.startswith("atlas"):
        cells = atlas_threshold(showers.cells)
        eta = showers.conditions.get("cell_eta")
        phi = showers.conditions.get("cell_phi")
        if eta is None or phi is None:  # fixed geometry: offsets from the layout (mm → angle)
            xs, ys = layout.cell_centres()
            eta, phi = xs / layout.angle_scale, ys / layout.angle_scale
        feats = atlas_features(cells, eta, phi, legacy="klein-width" in legacy)
        family = "atlas"
    elif name == "calogan":
        cells = np.asarray(showers.cells, np.float64)
        feats = calogan_features(list(layout.images(cells).values()))
        family = "calogan"
    else:
        cells = np.asarray(showers.cells, np.float64)
        feats = grid_features(cells, energy, layout)
        family = name or "grid"
    low = np.concatenate([cond[:, None], cells / energy[:, None]], 1).astype(low_dtype)
    data = FamilyData(
        family, feats, low, cells, cells if cells.shape[1] <= 1000 else low[:, :1], cond
    )
    data.images = {f"mean {k}": v.mean(0) for k, v in layout.images(cells).items()}
    data.labels = calo_labels(list(feats), family)
    return data


_CC_NAMES = (
    ("ec_eta", "EC Eta layer"),
    ("ec_phi", "EC Phi layer"),
    ("width_eta", "Width Eta layer"),
    ("width_phi", "Width Phi layer"),
)


def _histogram_text(m: Mapping[str, Any], published_only: bool) -> str:
    """Blocks "<name>: \\n<value>\\n" of the separation powers in the order of §3.9."""
    feats, pooled = m["features"], m.get("pooled", {})
    ids = lambda p: sorted(int(k.rpartition("_")[2]) for k in feats if k.startswith(p))  # noqa: E731
    layers, alpha = ids("e_layer_"), ids("ec_eta_")
    order = [("Etot / Einc", feats, "etot_einc")]
    order += [(f"E layer {k}", feats, f"e_layer_{k}") for k in layers]
    order += [(f"{label} {k}", feats, f"{key}_{k}") for key, label in _CC_NAMES for k in alpha]
    energies = sorted(int(k.rpartition("_")[2]) for k in pooled if k.startswith("etot_einc_at_"))
    order += [(f"Etot / Einc at E = {float(e)}", pooled, f"etot_einc_at_{e}") for e in energies]
    order.append(("Voxel distribution", pooled, "voxel_energy"))
    if not published_only:
        for key, label in (("sparsity", "Sparsity"), ("ec_r", "EC R"), ("width_r", "Width R")):
            order += [(f"{label} layer {k}", feats, f"{key}_{k}") for k in layers]
    blocks = ["List of separation powers of all histograms (project name: separation power)"]
    for label, group, key in order:
        blocks.append(f"{label}: \n{group.get(key, {}).get('separation')!r}\n")
    return "\n".join(blocks)


def calochallenge_text_files(evaluation: Any) -> dict[str, str]:
    """CaloChallenge-style text files (§3.9) for a CaloChallenge evaluation; {} otherwise.

    ``histogram_chi2_<d>.txt`` (separation powers in the published order, dataset 1 with the
    15 per-energy responses; then the project additions sparsity, EC_r, W_r unless the
    ``cc-histograms`` switch, §A.9), ``classifier_<mode>_<d>.txt``, ``fpd_kpd_<d>.txt`` and
    ``prdc_<d>.txt`` (one value per line; one line under ``prdc-one-line``, §A.13).
    """
    result = evaluation.summary["families"].get("calochallenge")
    if result is None:
        return {}
    legacy = evaluation.summary["settings"].get("legacy", ())
    d = evaluation.samples["calochallenge"][0].meta.get("dataset", "custom")
    m = result["metrics"]
    out = {f"histogram_chi2_{d}.txt": _histogram_text(m, "cc-histograms" in legacy)}
    if "prdc" in m:
        p = m["prdc"]
        sep = " " if "prdc-one-line" in legacy else "\n"
        keys = ("precision", "recall", "density", "coverage")
        out[f"prdc_{d}.txt"] = sep.join(f"{k}: {p[k]}" for k in keys) + "\n"
    for mode in ("low", "high"):
        c = m.get(f"classifier_{mode}")
        if c:
            out[f"classifier_cls-{mode}_{d}.txt"] = (
                f"settings: {c['settings']}\n"
                f"runs: {len(c['runs'])}, n per class: {c['n_per_class']}\n"
                f"Final result of classifier test (AUC / JSD):\n{c['auc']:.4f} / {c['jsd']:.4f}\n"
            )
    if "fpd" in m:
        out[f"fpd_kpd_{d}.txt"] = (
            f"FPD (x10^3): {m['fpd']['value_x1e3']:.4f} ± {m['fpd']['error_x1e3']:.4f}\n"
            f"KPD (x10^3): {m['kpd']['value_x1e3']:.4f} ± {m['kpd']['error_x1e3']:.4f}\n"
        )
    return out
