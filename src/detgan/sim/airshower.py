"""Parameterised air-shower footprints and time traces on a 9 × 9 ground array.

Implements the model of Erdmann, Glombitza and Walz, Astropart. Phys. 97 (2018) 46, as used by
Erdmann et al., Comput. Softw. Big Sci. 2 (2018) 4 (arXiv:1802.03325); the exact definition is
``airshower.md``. Vectorised over batches of events, with multinomial binning of the particle
arrival times, so that 10⁵ events take seconds rather than hours.

Usage::

    from detgan.sim.airshower import make_config, simulate
    cfg = make_config("paper", "data")                  # or make_config("paper", "sim", s0=800.0)
    arrays = simulate(cfg, n=1000, seed=0)              # dict of numpy arrays, airshower.md §16.1
    arrays["footprint"].shape                           # (1000, 9, 9)

Randomness: each batch b of ``batch_size`` events draws from independent streams derived
from (seed, b): one for the event-level quantities (E, direction, core, Xmax), one for the
fixed-shape detector draws (particle-number and timing fluctuations, noise) and one for the
binning of particles in time. The first two are identical for the 'data' and 'sim' variants,
so the same seed gives matched pairs (airshower.md §13).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.special import ndtr

from detgan.config import Config, pick_preset, require
from detgan.sim.atmosphere import height_at_depth, sample_xmax, vertical_depth

__all__ = [
    "AirshowerConfig",
    "PRESETS",
    "VARIANTS",
    "make_config",
    "station_positions",
    "simulate",
    "simulate_batch",
    "output_datasets",
    "amplitudes",
    "time_medians",
    "bin_delays",
    "sample_events",
    "batch_slices",
]

#: Upper bound on the Xmax redraw rounds (airshower.md §4.6).
MAX_XMAX_REDRAWS = 1000
#: Rows with at most this many particles are binned particle by particle, the others with one
#: multinomial draw over the bins; both give exactly the same distribution (airshower.md §10).
PER_PARTICLE_LIMIT = 64
FLOAT16_MAX = 65504.0


@dataclasses.dataclass(frozen=True)
class AirshowerConfig(Config):
    """Every parameter of ``airshower.md`` §15 (defaults: 'reconstruction' preset, 'data')."""

    preset: str = "reconstruction"
    variant: str = "data"
    n_side: int = 9
    layout: str = "offset"
    spacing: float = 1500.0
    station_height: float = 1400.0
    energy_distribution: str = "log"
    energy_min: float = 1.0
    energy_max: float = 100.0
    mass_number: float = 1.0
    zenith_max: float = 60.0
    core_radius: float = 750.0
    xmax_mode: str = "gumbel"
    xmax_fixed: float = 800.0
    xmax_model: str = "EPOS-LHC"
    xmax_min_height: float = 200.0
    atmosphere_model: int = 17
    s0: float = 900.0
    muon_weight: float = 0.3
    em_weight: float = 0.7
    mass_exponent: float = 0.15
    ldf_exponent_muon: float = -4.7
    ldf_exponent_em: float = -6.1
    r_min: float = 150.0
    r_ref: float = 1000.0
    atten_exponent_muon: float = -0.1
    atten_exponent_em: float = -0.4
    dx_ref: float = 100.0
    atten_cap: float = 10.0
    signal_cap: float = 1.0e7
    fluctuation_width: float = 1.0
    n_bins: int = 80
    bin_width: float = 25.0
    time_muon_base: float = 50.0
    time_muon_scale: float = 140.0
    time_em_base: float = 80.0
    time_em_scale: float = 200.0
    time_r_ref: float = 750.0
    time_r_exponent: float = 1.4
    time_dx_coeff_muon: float = 0.2
    time_dx_coeff_em: float = 0.1
    time_dx_ref: float = 1000.0
    time_sigma_ln: float = 0.7
    em_shift_divisor: float = 1.5
    relative_noise: float = 0.05
    noise_level: float = 1.2
    pedestal_spread: float = 0.5
    trigger_factor: float = 1.2
    trigger_threshold: float = -1.0  # -1 means 'auto' = n_bins·noise_level·trigger_factor
    wavefront: str = "planar"
    origin_depth_fraction: float = 0.5
    speed_of_light: float = 0.3
    jitter_scale: float = 480.0
    event_time_offset: float = 50.0
    batch_size: int = 2000
    store_components: bool = False
    store_traces: bool = True
    traces_dtype: str = "float32"
    compression: str = "none"

    def validate(self) -> None:
        choices = {
            "layout": ("offset", "axial", "cartesian"),
            "energy_distribution": ("linear", "log"),
            "xmax_mode": ("gumbel", "fixed"),
            "xmax_model": ("EPOS-LHC",),
            "wavefront": ("planar", "spherical"),
            "traces_dtype": ("float32", "float16"),
            "compression": ("none", "gzip", "lzf"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            require(value in allowed, f"{name}='{value}' is not one of {', '.join(allowed)}")
        require(self.atmosphere_model == 17, "atmosphere_model must be 17 (CORSIKA model 17)")
        require(self.energy_min > 0, f"energy_min={self.energy_min} must be positive")
        require(
            self.energy_min < self.energy_max,
            f"energy_min={self.energy_min} must be below energy_max={self.energy_max}",
        )
        require(0 <= self.zenith_max < 90, f"zenith_max={self.zenith_max} must be in [0, 90)")
        require(self.mass_number >= 1, f"mass_number={self.mass_number} must be at least 1")
        for name in ("n_side", "n_bins", "batch_size"):
            require(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be at least 1")
        for name in (
            "spacing",
            "bin_width",
            "r_ref",
            "dx_ref",
            "time_r_ref",
            "time_dx_ref",
            "speed_of_light",
            "s0",
            "signal_cap",
            "em_shift_divisor",
            "atten_cap",
        ):
            require(getattr(self, name) > 0, f"{name}={getattr(self, name)} must be positive")
        for name in (
            "fluctuation_width",
            "relative_noise",
            "noise_level",
            "pedestal_spread",
            "time_sigma_ln",
            "core_radius",
            "r_min",
            "muon_weight",
            "em_weight",
            "jitter_scale",
            "event_time_offset",
            "trigger_factor",
            "xmax_min_height",
        ):
            require(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must not be negative")
        require(self.muon_weight + self.em_weight > 0, "muon_weight + em_weight must be positive")
        require(
            self.trigger_threshold == -1.0 or self.trigger_threshold >= 0,
            f"trigger_threshold={self.trigger_threshold} must be -1 (auto) or non-negative",
        )
        if self.xmax_mode == "fixed":
            limit = float(vertical_depth(self.station_height + self.xmax_min_height))
            require(
                self.xmax_fixed < limit,
                f"xmax_fixed={self.xmax_fixed} g/cm² puts the shower maximum less than "
                f"{self.xmax_min_height} m above the array for vertical showers; use a value "
                f"below {limit:.3f}",
            )

    @property
    def threshold(self) -> float:
        """The station trigger threshold in VEM ('auto' = n_bins·noise_level·trigger_factor)."""
        if self.trigger_threshold >= 0:
            return self.trigger_threshold
        return self.n_bins * self.noise_level * self.trigger_factor

    def resolved(self) -> dict:
        """All parameters with 'auto' values replaced by what they resolve to (file attrs)."""
        values = self.to_dict()
        values["trigger_threshold"] = self.threshold
        return values


#: Event-level sampling of the two presets (airshower.md §14).
PRESETS: dict[str, dict] = {
    "paper": {"energy_distribution": "linear", "zenith_max": 0.0, "xmax_mode": "fixed"},
    "reconstruction": {"energy_distribution": "log", "zenith_max": 60.0, "xmax_mode": "gumbel"},
}
#: Composition and detector knobs of the two variants (airshower.md §13).
VARIANTS: dict[str, dict] = {
    "data": {
        "muon_weight": 0.3,
        "em_weight": 0.7,
        "noise_level": 1.2,
        "relative_noise": 0.05,
        "fluctuation_width": 1.0,
    },
    "sim": {
        "muon_weight": 0.7,
        "em_weight": 0.3,
        "noise_level": 0.6,
        "relative_noise": 0.025,
        "fluctuation_width": 0.5,
    },
}


def make_config(preset: str = "paper", variant: str = "data", **overrides) -> AirshowerConfig:
    """The named preset + variant, with any parameter overridden by name."""
    if overrides.get("trigger_threshold") == "auto":
        overrides["trigger_threshold"] = -1.0
    base = AirshowerConfig(
        preset=preset,
        variant=variant,
        **pick_preset(PRESETS, preset, "air-shower preset"),
        **pick_preset(VARIANTS, variant, "air-shower variant"),
    )
    return base.replace(**overrides) if overrides else base


def station_positions(cfg: AirshowerConfig) -> np.ndarray:
    """Station positions (n², 3) in m, flat index k = i·n + j (i along x), airshower.md §3."""
    n = cfg.n_side
    n0 = (n - 1) / 2
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    shift = {"offset": 0.5 * np.mod(j - n0, 2), "axial": 0.5 * (j - n0), "cartesian": 0.0 * j}
    x = cfg.spacing * (i - n0 + shift[cfg.layout])
    y_step = cfg.spacing * (math.sin(math.radians(60)) if cfg.layout != "cartesian" else 1.0)
    y = y_step * (j - n0)
    z = np.full_like(x, cfg.station_height, dtype=np.float64)
    return np.stack([x, y, z], axis=-1).reshape(n * n, 3)


def sample_events(cfg: AirshowerConfig, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Event-level draws (§4): energy (n,) EeV, axis (n, 3), core (n, 3), xmax (n,)."""
    u = rng.random(n)
    if cfg.energy_distribution == "linear":
        energy = cfg.energy_min + (cfg.energy_max - cfg.energy_min) * u
    else:
        lo, hi = math.log10(cfg.energy_min), math.log10(cfg.energy_max)
        energy = 10.0 ** (lo + (hi - lo) * u)
    phi = 2 * np.pi * (rng.random(n) - 0.5)
    sin2max = math.sin(math.radians(cfg.zenith_max)) ** 2
    theta = np.arccos(np.sqrt(1.0 - rng.random(n) * sin2max))
    rho = cfg.core_radius * np.sqrt(rng.random(n))
    psi = 2 * np.pi * rng.random(n)
    core = np.stack([rho * np.cos(psi), rho * np.sin(psi), np.full(n, cfg.station_height)], -1)
    axis = np.stack(
        [np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=-1
    )
    lg_e = np.log10(energy) + 18.0
    xmax = _draw_xmax(cfg, rng, lg_e, np.cos(theta))
    return {"energy": energy, "axis": axis, "core": core, "xmax": xmax}


def _draw_xmax(cfg: AirshowerConfig, rng: np.random.Generator, lg_e, cos_theta) -> np.ndarray:
    """Fixed Xmax, or generalised Gumbel redrawn until the maximum is high enough (§4.6)."""
    if cfg.xmax_mode == "fixed":
        return np.full(len(lg_e), cfg.xmax_fixed)
    limit = vertical_depth(cfg.station_height + cfg.xmax_min_height) / cos_theta
    xmax = sample_xmax(rng, lg_e, cfg.mass_number)
    for _ in range(MAX_XMAX_REDRAWS):
        bad = xmax >= limit
        if not bad.any():
            return xmax
        xmax[bad] = sample_xmax(rng, lg_e[bad], cfg.mass_number)
    raise RuntimeError(f"Xmax redraw did not converge in {MAX_XMAX_REDRAWS} rounds")


def amplitudes(
    cfg: AirshowerConfig, energy: np.ndarray, r: np.ndarray, dx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Expected muon and EM signals (VEM), §8; ``energy`` broadcasts against ``r`` and ``dx``.

    S_μ = S0·f_μ·(max(r, r_min)/r_ref)^−4.7·min((dX/dx_ref)^−0.1, cap), likewise for EM, with
    S0 = s0·E/10 EeV; the station sum is capped at ``signal_cap`` by proportional rescaling.
    """
    s0 = cfg.s0 * np.asarray(energy) / 10.0
    r_mu = cfg.muon_weight * cfg.mass_number**cfg.mass_exponent
    f_mu = r_mu / (r_mu + cfg.em_weight)
    lateral = np.maximum(r, cfg.r_min) / cfg.r_ref
    depth = dx / cfg.dx_ref
    s_mu = (
        s0
        * f_mu
        * lateral**cfg.ldf_exponent_muon
        * np.minimum(depth**cfg.atten_exponent_muon, cfg.atten_cap)
    )
    s_em = (
        s0
        * (1 - f_mu)
        * lateral**cfg.ldf_exponent_em
        * np.minimum(depth**cfg.atten_exponent_em, cfg.atten_cap)
    )
    scale = np.minimum(1.0, cfg.signal_cap / np.maximum(s_mu + s_em, 1e-300))
    return s_mu * scale, s_em * scale


def time_medians(
    cfg: AirshowerConfig, r: np.ndarray, dx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median delays m_μ, m_em and the EM shift Δ = (m_em − m_μ)/1.5, all in ns (§10)."""
    radial = (r / cfg.time_r_ref) ** cfg.time_r_exponent
    m_mu = cfg.time_muon_base + cfg.time_muon_scale * radial * (
        1 - cfg.time_dx_coeff_muon * dx / cfg.time_dx_ref
    )
    m_em = cfg.time_em_base + cfg.time_em_scale * radial * (
        1 - cfg.time_dx_coeff_em * dx / cfg.time_dx_ref
    )
    return m_mu, m_em, (m_em - m_mu) / cfg.em_shift_divisor


def bin_delays(
    rng: np.random.Generator,
    counts: np.ndarray,
    shift: np.ndarray,
    median: np.ndarray,
    sigma: float,
    n_bins: int,
    bin_width: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Histogram ``counts[k]`` delays t = shift[k] + LogNormal(median[k], sigma) into bins.

    ``counts`` etc. have shape (R,); the (R, n_bins) float32 counts are added to ``out``
    (new zeros if None) and returned; delays beyond the window are discarded. Rows with few
    particles draw each delay, the others one multinomial over the bins plus overflow
    (identical distributions, airshower.md §10).
    """
    if out is None:
        out = np.zeros((len(counts), n_bins), dtype=np.float32)
    small = np.flatnonzero((counts > 0) & (counts <= PER_PARTICLE_LIMIT))
    for rows in np.array_split(small, max(1, small.size // 20_000)):
        _bin_particles(rng, rows, counts, shift, median, sigma, bin_width, out)
    large = np.flatnonzero(counts > PER_PARTICLE_LIMIT)
    if large.size:
        edges = bin_width * np.arange(n_bins + 1)
        lag = np.maximum(edges[None, :] - shift[large, None], 0.0)
        with np.errstate(divide="ignore"):
            z = (np.log(lag) - np.log(median[large, None])) / sigma
        cdf = ndtr(z)  # log(0) = -inf gives F = 0 below the shift
        p = np.empty((large.size, n_bins + 1))
        p[:, :n_bins] = np.diff(cdf, axis=1)
        p[:, n_bins] = 1.0 - cdf[:, -1]
        p = np.clip(p, 0.0, None)
        p /= p.sum(axis=1, keepdims=True)
        out[large] += rng.multinomial(counts[large], p)[:, :n_bins]
    return out


def _bin_particles(rng, rows, counts, shift, median, sigma, bin_width, out) -> None:
    """Per-particle path of :func:`bin_delays` for the given rows (adds into ``out``)."""
    if rows.size == 0:
        return
    n_bins = out.shape[1]
    row = np.repeat(np.arange(rows.size), counts[rows])
    src = rows[row]
    t = shift[src] + median[src] * np.exp(sigma * rng.standard_normal(row.size))
    b = np.floor(t / bin_width).astype(np.int64)
    b[t == n_bins * bin_width] = n_bins - 1
    keep = b < n_bins
    hist = np.bincount(row[keep] * n_bins + b[keep], minlength=rows.size * n_bins)
    out[rows] += hist.reshape(rows.size, n_bins)


def _geometry(cfg: AirshowerConfig, ev: dict[str, np.ndarray], pos: np.ndarray):
    """Per-station r, dX and projection s, shapes (B, K) (§7)."""
    axis, core = ev["axis"], ev["core"]
    cos_t = axis[:, 2]
    d = pos[None, :, :] - core[:, None, :]
    s = np.einsum("bkc,bc->bk", d, axis)
    r = np.linalg.norm(d - s[..., None] * axis[:, None, :], axis=-1)
    h_max = height_at_depth(ev["xmax"], cos_t)
    v_max = core + axis * ((h_max - cfg.station_height) / cos_t)[:, None]
    to_max = v_max[:, None, :] - pos[None, :, :]
    cos_s = to_max[..., 2] / np.linalg.norm(to_max, axis=-1)
    dx = (vertical_depth(pos[:, 2])[None, :] - (ev["xmax"] * cos_t)[:, None]) / cos_s
    return r, dx, s


def _arrival_time(cfg, ev, pos, s, s_station, g_jitter, u_offset) -> np.ndarray:
    """Station times T (B, K) in ns: front, jitter σ_T = 480/(1 + log10(S+1)), event offset."""
    if cfg.wavefront == "planar":
        t0 = -s / cfg.speed_of_light
    else:
        cos_t = ev["axis"][:, 2]
        h_o = height_at_depth(cfg.origin_depth_fraction * ev["xmax"], cos_t)
        origin = ev["core"] + ev["axis"] * ((h_o - cfg.station_height) / cos_t)[:, None]
        dist = np.linalg.norm(pos[None] - origin[:, None], axis=-1)
        t0 = (dist - np.linalg.norm(ev["core"] - origin, axis=-1)[:, None]) / cfg.speed_of_light
    sigma_t = cfg.jitter_scale / (1.0 + np.log10(s_station + 1.0))
    offset = cfg.event_time_offset * (2.0 * u_offset - 1.0)
    return t0 + sigma_t * g_jitter + offset[:, None]


def _streams(seed: int, batch: int) -> tuple[np.random.Generator, ...]:
    """Independent (event, detector, noise, binning) generators for one batch."""
    children = np.random.SeedSequence([seed, batch]).spawn(4)
    return tuple(np.random.default_rng(c) for c in children)


def simulate_batch(cfg: AirshowerConfig, seed: int, batch: int, n: int) -> dict[str, np.ndarray]:
    """Simulate events of batch number ``batch`` (n ≤ batch_size), as the §16.1 datasets."""
    rng_ev, rng_det, rng_noise, rng_bin = _streams(seed, batch)
    pos = station_positions(cfg)
    k, t_bins = len(pos), cfg.n_bins
    ev = sample_events(cfg, rng_ev, n)
    # Fixed-shape detector draws first, so both variants share them (common random numbers).
    g_fluct = rng_det.standard_normal((2, n, k))
    g_jitter = rng_det.standard_normal((n, k))
    u_offset = rng_det.random(n)
    r, dx, s = _geometry(cfg, ev, pos)
    s_mu, s_em = amplitudes(cfg, ev["energy"][:, None], r, dx)
    n_mu = _fluctuate(s_mu, cfg.fluctuation_width, g_fluct[0])
    n_em = _fluctuate(s_em, cfg.fluctuation_width, g_fluct[1])
    m_mu, m_em, delta = time_medians(cfg, r, dx)
    sig, bw = cfg.time_sigma_ln, cfg.bin_width
    h_mu = bin_delays(rng_bin, n_mu.ravel(), np.zeros(n * k), m_mu.ravel(), sig, t_bins, bw)
    if cfg.store_components:
        h_em = bin_delays(rng_bin, n_em.ravel(), delta.ravel(), m_em.ravel(), sig, t_bins, bw)
        recorded = h_mu + h_em
    else:  # accumulate both components in one buffer: memory, not physics
        recorded = bin_delays(
            rng_bin, n_em.ravel(), delta.ravel(), m_em.ravel(), sig, t_bins, bw, out=h_mu
        )
    grid = (n, cfg.n_side, cfg.n_side)
    s_station = recorded.sum(-1, dtype=np.float64).reshape(n, k)
    recorded = _add_noise(cfg, recorded.reshape(*grid, t_bins), rng_noise)
    total = recorded.sum(axis=-1, dtype=np.float64)
    triggered = total >= cfg.threshold
    recorded *= triggered[..., None]
    times = _arrival_time(cfg, ev, pos, s, s_station, g_jitter, u_offset).reshape(grid)
    out = {
        "traces": _store_traces(cfg, recorded),
        "triggered": triggered,
        "arrival_time": np.where(triggered, times, 0.0).astype(np.float32),
        "footprint": np.where(triggered, np.log10(total + 1.0), 0.0).astype(np.float32),
        "energy": ev["energy"],
        "log10_energy": np.log10(ev["energy"]) + 18.0,
        "xmax": ev["xmax"],
        "core": ev["core"],
        "axis": ev["axis"],
    }
    if cfg.store_components:
        out["muon_traces"] = h_mu.reshape(*grid, t_bins)
        out["em_traces"] = h_em.reshape(*grid, t_bins)
    return out


def _fluctuate(mean: np.ndarray, width: float, g: np.ndarray) -> np.ndarray:
    """N = max(trunc(S + f·√S·g), 0): Gaussian, truncated towards zero, floored (§9)."""
    return np.maximum(np.trunc(mean + width * np.sqrt(mean) * g), 0).astype(np.int64)


def _add_noise(cfg: AirshowerConfig, trace: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relative noise, then pedestal ν(1 + 0.5·g), then clip at 0 (§12), in float32.

    Modifies and returns ``trace`` (B, n, n, T); one scratch buffer holds the deviates, since
    these passes over the trace cube dominate time and memory.
    """
    f32 = np.float32
    g = rng.standard_normal(trace.shape, dtype=f32)
    g *= f32(cfg.relative_noise)
    g += f32(1.0)
    trace *= g
    rng.standard_normal(dtype=f32, out=g)
    g *= f32(cfg.noise_level * cfg.pedestal_spread)
    g += f32(cfg.noise_level)
    trace += g
    return np.maximum(trace, f32(0.0), out=trace)


def _store_traces(cfg: AirshowerConfig, recorded: np.ndarray) -> np.ndarray:
    if cfg.traces_dtype == "float16":
        return np.minimum(recorded, FLOAT16_MAX).astype(np.float16)
    return recorded


def output_datasets(cfg: AirshowerConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-event shapes and dtypes of the datasets a file of this config holds (§16.1)."""
    n, t = cfg.n_side, cfg.n_bins
    specs = {
        "traces": ((n, n, t), cfg.traces_dtype),
        "triggered": ((n, n), "bool"),
        "arrival_time": ((n, n), "float32"),
        "footprint": ((n, n), "float32"),
        "energy": ((), "float64"),
        "log10_energy": ((), "float64"),
        "xmax": ((), "float64"),
        "core": ((3,), "float64"),
        "axis": ((3,), "float64"),
    }
    if not cfg.store_traces:  # footprint-only files (e.g. the demo): 1 kB instead of 27 kB/event
        del specs["traces"]
    if cfg.store_components:
        specs["muon_traces"] = ((n, n, t), "float32")
        specs["em_traces"] = ((n, n, t), "float32")
    return specs


def batch_slices(cfg: AirshowerConfig, n: int) -> list[tuple[int, int]]:
    """(start, length) of every batch for ``n`` events."""
    return [(s, min(cfg.batch_size, n - s)) for s in range(0, n, cfg.batch_size)]


def simulate(cfg: AirshowerConfig, n: int, seed: int) -> dict[str, np.ndarray]:
    """Simulate ``n`` events in memory (for tests and small samples; files use the CLI)."""
    require(n >= 1, f"number of events must be at least 1, got {n}")
    parts = [simulate_batch(cfg, seed, b, size) for b, (_, size) in enumerate(batch_slices(cfg, n))]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
