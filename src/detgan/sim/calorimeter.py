"""Parameterised electromagnetic showers in a calorimeter (GFlash-like reference Monte Carlo).

Implements ``calorimeter.md`` §2 on the geometries of :mod:`detgan.sim.geometry`, following
Grindhammer and Peters, hep-ex/0001020 ([GP00]):

1. Per shower, (ln T, ln α) are drawn from a correlated bivariate normal whose means, widths and
   correlation depend on ln(E/E_c) and Z; T is the depth of the shower maximum and α the shape
   of the Gamma longitudinal profile (1/E) dE/dt = (βt)^(α−1) β e^(−βt) / Γ(α), β = (α − 1)/T.
   Photons first convert at t0 ~ Exponential(mean 9/7 X0).
2. The energy is carried by N_s = 93 ln(Z) E^0.876 spots of equal energy (E in GeV), capped at
   ``max_spots`` (then each spot carries more energy: mean profiles are kept, lateral
   fluctuations slightly enlarged). **Spot depths are drawn from the energy profile itself**
   (``spot_depth="energy"``, the simplification allowed by the spec, so the mean deposited
   profile is exactly the Gamma profile); ``spot_depth="spot"`` uses the GP00 spot profile
   T_s = T(0.698 + 0.00212 Z), α_s = α(0.639 + 0.00334 Z).
3. Lateral radius of a spot at τ = t/T from the two-component profile
   f(r) = p·2rR_C²/(r² + R_C²)² + (1 − p)·2rR_T²/(r² + R_T²)² (r in R_M), sampled by inverting
   the cumulative r²/(r² + R²); azimuth uniform.
4. Spot position p + t·X0·u + r·R_M(cos φ e1 + sin φ e2) (inclined showers are elongated).
5. Response: visible energy × (1 + (a/√E)·g), spots histogrammed into cells, Gaussian noise
   σ_n per cell, readout threshold; energy outside a layer's window is overflow, energy
   outside every layer is lost.

Two numerical guards are applied: α and α_s are floored at :data:`ALPHA_MIN` (the GP00 fit can
give α ≤ 1, for which β ≤ 0), and the sampling factor is floored at 0.

Randomness: batch b (of ``batch_size`` showers) draws from ``numpy.random.default_rng((seed,
b))``, so every batch is reproducible on its own and files are identical for equal (config,
seed). Vectorised over showers and spots with numpy in float32; spots are processed in chunks
of at most ``chunk_spots`` so memory is bounded.

Usage::

    from detgan.sim.calorimeter import CaloSimConfig, simulate
    showers = simulate(CaloSimConfig(geometry="atlas-cluster"), n=1000, seed=1)
    showers.cells.shape                                   # (1000, 89), MeV
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from detgan import __version__
from detgan.config import Config, require
from detgan.io.showers import Showers, showers_writer
from detgan.sim.calo_media import Medium
from detgan.sim.geometry import GEOMETRIES, CaloGeometry, SpotBinner, get_geometry
from detgan.utils import check_output_path

__all__ = [
    "CaloSimConfig",
    "PDG",
    "ALPHA_MIN",
    "mean_longitudinal",
    "sample_longitudinal",
    "n_spots",
    "lateral_parameters",
    "sample_primaries",
    "simulate_batch",
    "simulate",
    "simulate_to_file",
    "batch_slices",
    "condition_specs",
    "file_attrs",
]

PDG = {"photon": 22, "electron": 11, "positron": -11}
ALPHA_MIN = 1.05
TAU_MAX = 100.0
PHOTON_T0_MEAN = 9.0 / 7.0  # X0, mean conversion depth
SPECTRA = ("default", "uniform", "log-uniform", "discrete")


@dataclasses.dataclass(frozen=True)
class CaloSimConfig(Config):
    """Settings of ``detgan simulate calo``.

    Attributes:
        geometry: one of :data:`detgan.sim.geometry.GEOMETRIES`.
        particle: ``default`` (the geometry's), ``photon``, ``electron`` or ``positron``.
        spectrum: ``default``, ``uniform``, ``log-uniform`` or ``discrete``.
        energy: fixed incident energy in MeV (0: use the spectrum).
        energy_min, energy_max: range of continuous spectra in MeV (0: the geometry's).
        max_spots: cap on the number of spots per shower.
        spot_depth: ``energy`` (spots follow the energy profile) or ``spot`` (GP00 spot profile).
        noise_scale: multiplies the geometry's electronic noise (0 switches it off).
        batch_size: showers per batch (the unit of seeding and of file writing).
        chunk_spots: at most this many spots are held in memory at once.
    """

    geometry: str = "calochallenge-1-photons"
    particle: str = "default"
    spectrum: str = "default"
    energy: float = 0.0
    energy_min: float = 0.0
    energy_max: float = 0.0
    max_spots: int = 20_000
    spot_depth: str = "energy"
    noise_scale: float = 1.0
    batch_size: int = 1000
    chunk_spots: int = 2_000_000

    def validate(self) -> None:
        require(
            self.geometry in GEOMETRIES,
            f"unknown geometry '{self.geometry}'; choose one of: {', '.join(GEOMETRIES)}",
        )
        require(
            self.particle in ("default", *PDG),
            f"unknown particle '{self.particle}'; choose default, {', '.join(PDG)}",
        )
        require(
            self.spectrum in SPECTRA,
            f"unknown spectrum '{self.spectrum}'; choose one of: {', '.join(SPECTRA)}",
        )
        require(self.spot_depth in ("energy", "spot"), "spot_depth must be 'energy' or 'spot'")
        geo = GEOMETRIES[self.geometry]
        lowest = 10 * geo.medium.ec
        for name in ("energy", "energy_min", "energy_max"):
            value = getattr(self, name)
            require(
                value == 0 or value >= lowest,
                f"{name}={value:g} MeV is below the parameterisation's range; "
                f"use >= {lowest:g} MeV",
            )
        low, high = self.energy_range
        require(low <= high, f"energy_min ({low:g} MeV) must not exceed energy_max ({high:g} MeV)")
        require(self.max_spots >= 10, "max_spots must be at least 10")
        require(self.noise_scale >= 0, "noise_scale must be >= 0")
        require(self.batch_size >= 1, "batch_size must be at least 1")
        require(self.chunk_spots >= self.max_spots, "chunk_spots must be at least max_spots")

    @property
    def geo(self) -> CaloGeometry:
        return get_geometry(self.geometry)

    @property
    def particle_name(self) -> str:
        return self.geo.particle if self.particle == "default" else self.particle

    @property
    def spectrum_name(self) -> str:
        return self.geo.spectrum if self.spectrum == "default" else self.spectrum

    @property
    def energy_range(self) -> tuple[float, float]:
        low, high = GEOMETRIES[self.geometry].energy_range
        return (self.energy_min or low, self.energy_max or high)


# --------------------------------------------------------------------------- one shower


def mean_longitudinal(energy: np.ndarray, medium: Medium) -> dict[str, np.ndarray]:
    """GP00 homogeneous-medium parameters for energies (N,) in MeV.

    Returns ``mean_ln_t``, ``sigma_ln_t``, ``mean_ln_alpha``, ``sigma_ln_alpha``, ``rho``, each
    (N,): ⟨ln T⟩ = ln(ln y − 0.812), σ = 1/(−1.4 + 1.26 ln y); ⟨ln α⟩ = ln(0.81 + (0.458 +
    2.26/Z) ln y), σ = 1/(−0.58 + 0.86 ln y); ρ = 0.705 − 0.023 ln y; y = E/E_c.
    """
    ln_y = np.log(np.asarray(energy, dtype=np.float64) / medium.ec)
    return {
        "mean_ln_t": np.log(ln_y - 0.812),
        "sigma_ln_t": 1.0 / (-1.4 + 1.26 * ln_y),
        "mean_ln_alpha": np.log(0.81 + (0.458 + 2.26 / medium.z) * ln_y),
        "sigma_ln_alpha": 1.0 / (-0.58 + 0.86 * ln_y),
        "rho": 0.705 - 0.023 * ln_y,
    }


def sample_longitudinal(
    energy: np.ndarray, medium: Medium, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw (T, α), each (N,), from the correlated log-normal of GP00; α ≥ ALPHA_MIN."""
    m = mean_longitudinal(energy, medium)
    g1, g2 = rng.standard_normal((2, len(m["rho"])))
    ln_t = m["mean_ln_t"] + m["sigma_ln_t"] * g1
    ln_a = m["mean_ln_alpha"] + m["sigma_ln_alpha"] * (
        m["rho"] * g1 + np.sqrt(1 - m["rho"] ** 2) * g2
    )
    return np.exp(ln_t), np.maximum(np.exp(ln_a), ALPHA_MIN)


def n_spots(energy: np.ndarray, medium: Medium, max_spots: int) -> np.ndarray:
    """N_s = 93 ln(Z) (E/GeV)^0.876 rounded, at least 1 and at most ``max_spots``; (N,) int64."""
    n = np.rint(93.0 * math.log(medium.z) * (np.asarray(energy) / 1000.0) ** 0.876)
    return np.clip(n, 1, max_spots).astype(np.int64)


def lateral_parameters(tau: np.ndarray, ln_e: np.ndarray, z: float) -> tuple[np.ndarray, ...]:
    """GP00 lateral profile at τ = t/T for ln(E/GeV): (R_C, R_T, p), in R_M, each like ``tau``.

    R_C = z1 + z2 τ; R_T = k1 (e^(k3(τ−k2)) + e^(k4(τ−k2))); p = p1 exp((p2−τ)/p3 −
    exp((p2−τ)/p3)) clipped to [0, 1] (calorimeter.md §2.3). τ is capped at ``TAU_MAX`` (such
    spots lie far behind any calorimeter) so that R_T stays finite in float32.
    """
    f32 = tau.dtype.type
    tau = np.minimum(tau, f32(TAU_MAX))  # deep-tail spots: keeps R_T finite in float32
    r_core = f32(0.0251) + f32(0.00319) * ln_e + f32(0.1162 - 0.000381 * z) * tau
    d = tau - f32(0.645)
    k4 = f32(0.3585) + f32(0.0412) * ln_e
    r_tail = f32(0.659 - 0.00309 * z) * (np.exp(f32(-2.59) * d) + np.exp(k4 * d))
    w = (f32(0.401 + 0.00187 * z) - tau) / (f32(1.313) - f32(0.0686) * ln_e)
    p = f32(2.632 - 0.00094 * z) * np.exp(w - np.exp(w))
    return r_core, r_tail, np.clip(p, 0, 1)


# --------------------------------------------------------------------------- primaries


def sample_primaries(cfg: CaloSimConfig, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Incident energy (N,) MeV, face point (N, 3) mm, direction (N, 3) and, for (η, φ)
    layouts, the impact (η, φ) (N,) each."""
    geo = cfg.geo
    energy = _sample_energy(cfg, n, rng)
    point, direction = np.zeros((n, 3)), np.tile([0.0, 0.0, 1.0], (n, 1))
    if geo.incidence == "lhcb":
        point[:, :2] = rng.uniform(-55.0, 55.0, (n, 2))
        theta = rng.standard_normal((n, 2)) * np.radians([20.0, 10.0])
        direction[:, :2] = np.tan(theta)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    out = {"energy": energy, "point": point, "direction": direction}
    if geo.layout.kind == "grid" and geo.layout.angle_scale:
        out["eta"] = rng.uniform(0.1, 1.1, n) * rng.choice([-1.0, 1.0], n)  # 0.1 < |η| < 1.1
        out["phi"] = rng.uniform(-np.pi, np.pi, n)
    return out


def _sample_energy(cfg: CaloSimConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    if cfg.energy > 0:
        return np.full(n, cfg.energy)
    low, high = cfg.energy_range
    spectrum = cfg.spectrum_name
    if spectrum == "uniform":
        return rng.uniform(low, high, n)
    if spectrum == "log-uniform":
        return np.exp(rng.uniform(math.log(low), math.log(high), n))
    values = np.asarray(cfg.geo.energies or _powers_of_two(low, high))
    weights = np.asarray(cfg.geo.weights or np.ones(len(values)), dtype=np.float64)
    return rng.choice(values, size=n, p=weights / weights.sum())


def _powers_of_two(low: float, high: float) -> tuple[float, ...]:
    values = tuple(2.0**k for k in range(40) if low <= 2.0**k <= high)
    require(
        bool(values), f"no power of two MeV lies in [{low:g}, {high:g}] for a discrete spectrum"
    )
    return values


# --------------------------------------------------------------------------- spots


def _shower_parameters(
    cfg: CaloSimConfig, prim: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per-shower (N,) quantities the spot sampling needs (float32 where used per spot)."""
    medium, energy = cfg.geo.medium, prim["energy"]
    t_max, alpha = sample_longitudinal(energy, medium, rng)
    if cfg.spot_depth == "spot":
        depth_alpha = np.maximum(alpha * (0.639 + 0.00334 * medium.z), ALPHA_MIN)
        depth_t = t_max * (0.698 + 0.00212 * medium.z)
    else:
        depth_alpha, depth_t = alpha, t_max
    n = len(energy)
    t0 = rng.exponential(PHOTON_T0_MEAN, n) if cfg.particle_name == "photon" else np.zeros(n)
    response = np.maximum(
        1.0 + medium.sampling / np.sqrt(energy / 1000.0) * rng.standard_normal(n), 0
    )
    f32 = np.float32
    return {
        "t_max": t_max,
        "alpha": alpha,
        "t0": t0,
        "response": response,
        "n_spots": n_spots(energy, medium, cfg.max_spots),
        "shape": depth_alpha.astype(f32),
        "scale": (depth_t / (depth_alpha - 1)).astype(f32),
        "inv_t": (1 / t_max).astype(f32),
        "ln_e": np.log(energy / 1000.0).astype(f32),
        "t0_f": t0.astype(f32),
    }


def _event_index(counts: np.ndarray) -> np.ndarray:
    """(S,) owner index of every spot for (N,) spot counts (faster than np.repeat)."""
    marks = np.zeros(int(counts.sum()), dtype=np.int64)
    starts = np.cumsum(counts)[:-1]
    np.add.at(marks, starts, 1)
    return np.cumsum(marks)


def _spot_histogram(
    cfg: CaloSimConfig,
    binner: SpotBinner,
    par: dict[str, np.ndarray],
    prim: dict[str, np.ndarray],
    sel: slice,
    rng: np.random.Generator,
) -> np.ndarray:
    """Spot counts per histogram slot, (n_sel, V + L + 1), for the showers ``sel``."""
    geo, f32 = cfg.geo, np.float32
    ev = _event_index(par["n_spots"][sel])
    take = {k: np.take(par[k][sel], ev) for k in ("shape", "scale", "inv_t", "ln_e", "t0_f")}
    t = rng.standard_gamma(take["shape"], dtype=f32)
    t *= take["scale"]
    r_core, r_tail, p = lateral_parameters(t * take["inv_t"], take["ln_e"], geo.medium.z)
    radius = np.where(rng.random(len(t), dtype=f32) < p, r_core, r_tail)
    q = rng.random(len(t), dtype=f32)
    radius *= np.sqrt(q / (f32(1) - q)) * f32(geo.medium.rm)  # mm
    turn = rng.random(len(t), dtype=f32)  # azimuth / 2π
    t += take["t0_f"]  # depth along the axis from the face, X0
    if geo.incidence == "normal" and geo.layout.kind == "calochallenge":
        slots = binner.bin_polar(radius, turn, t)
    else:
        slots = _bin_positions(geo, binner, prim, sel, ev, t, radius, turn)
    n_sel = len(par["n_spots"][sel])
    flat = ev * binner.n_hist + slots
    return np.bincount(flat, minlength=n_sel * binner.n_hist).reshape(n_sel, binner.n_hist)


def _bin_positions(
    geo: CaloGeometry,
    binner: SpotBinner,
    prim: dict[str, np.ndarray],
    sel: slice,
    ev: np.ndarray,
    t: np.ndarray,
    radius: np.ndarray,
    turn: np.ndarray,
) -> np.ndarray:
    """Cartesian spot positions p + t·X0·u + r(cos φ e1 + sin φ e2), then cell slots."""
    angle = turn * np.float32(2 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    if geo.incidence == "normal":
        x, y, depth = radius * cos, radius * sin, t
    else:
        u = prim["direction"][sel]
        e1 = np.cross([0.0, 1.0, 0.0], u)
        e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
        e2 = np.cross(u, e1)
        along = t * np.float32(geo.medium.x0)
        pos = []
        for k in range(3):
            c = [np.take(a[:, k].astype(np.float32), ev) for a in (prim["point"][sel], u, e1, e2)]
            pos.append(c[0] + along * c[1] + radius * (cos * c[2] + sin * c[3]))
        x, y, depth = pos[0], pos[1], pos[2] / np.float32(geo.medium.x0)
    if geo.layout.kind == "calochallenge":
        return binner.bin_cartesian_polar(x, y, depth)
    return binner.bin_xy(x, y, depth)


# --------------------------------------------------------------------------- batches and files


@functools.lru_cache(maxsize=16)
def _binner(geo: CaloGeometry) -> SpotBinner:
    return SpotBinner(geo)


def _per_cell(geo: CaloGeometry, values: tuple[float, ...]) -> np.ndarray:
    """Per-slot values expanded to the (V,) cells."""
    sizes = np.diff(geo.layout.offsets)
    return np.repeat(np.asarray(values, dtype=np.float32), sizes)


def simulate_batch(cfg: CaloSimConfig, seed: int, batch: int, n: int) -> Showers:
    """Simulate the ``n`` showers of batch number ``batch`` with generator ``(seed, batch)``.

    Returns :class:`~detgan.io.showers.Showers`: energy (n,) MeV, cells (n, V) float32 MeV,
    conditions ``pdg`` and, per geometry, ``overflow`` (n, L), ``point``/``momentum`` (n, 3)
    or ``cell_eta``/``cell_phi`` (n, V).
    """
    rng = np.random.default_rng([seed, batch])
    geo = cfg.geo
    binner = _binner(geo)
    prim = sample_primaries(cfg, n, rng)
    par = _shower_parameters(cfg, prim, rng)
    hist = np.empty((n, binner.n_hist), dtype=np.float32)
    ends = np.cumsum(par["n_spots"])
    start = 0
    while start < n:  # chunks of consecutive showers with at most chunk_spots spots
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + cfg.chunk_spots, side="right")))
        hist[start:stop] = _spot_histogram(cfg, binner, par, prim, slice(start, stop), rng)
        start = stop
    hist *= (prim["energy"] * par["response"] / par["n_spots"]).astype(np.float32)[:, None]
    v = geo.layout.n_cells
    cells = hist[:, :v]
    if cfg.noise_scale > 0 and any(geo.noise):
        cells += rng.standard_normal(cells.shape, dtype=np.float32) * (
            _per_cell(geo, geo.noise) * np.float32(cfg.noise_scale)
        )
    cells[cells < _per_cell(geo, geo.threshold)] = 0.0
    conditions = _conditions(cfg, prim, hist[:, v : v + geo.n_slots])
    meta = {"source_format": "simulation", "geometry": geo.name, "seed": seed, "batch": batch}
    return Showers(prim["energy"], np.ascontiguousarray(cells), geo.layout, conditions, meta)


def _conditions(
    cfg: CaloSimConfig, prim: dict[str, np.ndarray], overflow: np.ndarray
) -> dict[str, np.ndarray]:
    geo, n = cfg.geo, len(prim["energy"])
    out = {"pdg": np.full(n, PDG[cfg.particle_name], dtype=np.int32)}
    if geo.layout.kind == "grid" and geo.layout.overflow:
        out["overflow"] = np.ascontiguousarray(overflow)
    if geo.incidence == "lhcb":
        out["point"] = prim["point"]
        out["momentum"] = prim["direction"] * prim["energy"][:, None]
    if "eta" in prim:
        x, y = geo.layout.cell_centres()
        scale = geo.layout.angle_scale
        out["cell_eta"] = (prim["eta"][:, None] + x / scale).astype(np.float32)
        phi = prim["phi"][:, None] + y / scale
        out["cell_phi"] = (np.mod(phi + np.pi, 2 * np.pi) - np.pi).astype(np.float32)
    return out


def condition_specs(cfg: CaloSimConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-event shape and dtype of every condition :func:`simulate_batch` returns."""
    geo, v = cfg.geo, cfg.geo.layout.n_cells
    specs: dict[str, tuple[tuple[int, ...], str]] = {"pdg": ((), "int32")}
    if geo.layout.kind == "grid" and geo.layout.overflow:
        specs["overflow"] = ((geo.n_slots,), "float32")
    if geo.incidence == "lhcb":
        specs["point"] = ((3,), "float64")
        specs["momentum"] = ((3,), "float64")
    if geo.layout.kind == "grid" and geo.layout.angle_scale:
        specs["cell_eta"] = ((v,), "float32")
        specs["cell_phi"] = ((v,), "float32")
    return specs


def batch_slices(cfg: CaloSimConfig, n: int) -> list[tuple[int, int]]:
    """(start, length) of every batch for ``n`` showers."""
    return [(s, min(cfg.batch_size, n - s)) for s in range(0, n, cfg.batch_size)]


def simulate(cfg: CaloSimConfig, n: int, seed: int) -> Showers:
    """Simulate ``n`` showers in memory (tests, small samples); identical to the file's events."""
    require(n >= 1, f"number of showers must be at least 1, got {n}")
    parts = [simulate_batch(cfg, seed, b, size) for b, (_, size) in enumerate(batch_slices(cfg, n))]
    out = Showers.concat(parts)
    out.meta.pop("batch", None)
    return out


def file_attrs(cfg: CaloSimConfig, seed: int, n: int) -> dict[str, Any]:
    """Provenance attributes of a simulated file: config, geometry, seed, version, spec."""
    return {
        "generator": "detgan.sim.calorimeter (Grindhammer & Peters, hep-ex/0001020)",
        "config_json": cfg.to_json(),
        "geometry_json": json.dumps(cfg.geo.to_dict()),
        "geometry": cfg.geometry,
        "particle": cfg.particle_name,
        "seed": seed,
        "n_events": n,
        "package_version": __version__,
        "spot_depth": cfg.spot_depth,
    }


def simulate_to_file(
    cfg: CaloSimConfig,
    n: int,
    seed: int,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Simulate ``n`` showers and stream them, batch by batch, into ``path`` in the geometry's
    format (atomic: the file appears only when complete). ``workers`` > 1 runs batches in
    forked processes; ``progress(k)`` is called with the size of every written batch."""
    from detgan.sim.run import parallel_batches

    require(n >= 1, f"number of showers must be at least 1, got {n}")
    check_output_path(path, overwrite)
    fmt = cfg.geo.file_format
    fmt = "native" if fmt == "atlas-cluster" else fmt
    slices = batch_slices(cfg, n)
    jobs = [(cfg, seed, b, size) for b, (_, size) in enumerate(slices)]
    with showers_writer(
        path,
        fmt,
        n,
        cfg.geo.layout,
        file_attrs(cfg, seed, n),
        conditions=condition_specs(cfg),
        overwrite=overwrite,
    ) as writer:
        for showers in parallel_batches(simulate_batch, jobs, workers):
            writer.append(showers)
            if progress is not None:
                progress(len(showers))
    return Path(path)
