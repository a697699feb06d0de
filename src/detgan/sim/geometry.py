"""Calorimeter cell layouts and the simulation geometries built on them.

Two kinds of *layout* describe how a flat vector of V cells is organised:

- :class:`CaloChallengeBinning`: cylindrical (layer, α, r) voxels of the CaloChallenge 2022
  ([CC], ``formats_and_metrics.md`` §1.1.3–1.1.5), with the built-in binnings of datasets
  1-photons, 1-pions, 2 and 3 in :data:`BINNINGS`. Within a layer the order is α-major, r fastest.
- :class:`GridLayout`: Cartesian per-layer grids (CaloGAN, arXiv:1712.10321; the LHCb ECAL of
  Chekalina et al., arXiv:1812.01319; the ATLAS 89- and 247-cell clusters). Within a layer the
  order is row-major over (first axis = x or η, second axis = y or φ).

A :class:`CaloGeometry` adds what the simulation needs: the depth range of every layer in
radiation lengths, the medium, per-layer noise and readout threshold, the default particle,
energy spectrum and incidence. :data:`GEOMETRIES` holds the geometries of ``calorimeter.md`` §3;
:class:`SpotBinner` maps energy-spot positions to flat cell indices (vectorised).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from detgan.config import pick_preset
from detgan.sim.calo_media import MEDIA, Medium
from detgan.utils import DetganError

__all__ = [
    "BinningLayer",
    "CaloChallengeBinning",
    "BINNINGS",
    "binning_for_voxels",
    "GridLayer",
    "GridLayout",
    "Layout",
    "layout_from_dict",
    "CaloGeometry",
    "GEOMETRIES",
    "get_geometry",
    "SpotBinner",
    "ATLAS_RADIUS_MM",
]

#: Radius (mm) at which the ATLAS (η, φ) cell sizes are converted to lengths (calorimeter.md §3.1).
ATLAS_RADIUS_MM = 1500.0


# --------------------------------------------------------------------------- CaloChallenge


@dataclasses.dataclass(frozen=True)
class BinningLayer:
    """One layer slot of a CaloChallenge binning: ``id``, radial edges (mm, from 0), n_α."""

    id: int
    r_edges: tuple[float, ...]
    n_alpha: int

    @property
    def n_r(self) -> int:
        return len(self.r_edges) - 1

    @property
    def n_voxels(self) -> int:
        return self.n_r * self.n_alpha


@dataclasses.dataclass(frozen=True)
class CaloChallengeBinning:
    """A CaloChallenge voxel binning (``formats_and_metrics.md`` §1.1.3–1.1.4).

    Attributes:
        particle: ``photon``, ``pion`` or ``electron`` (the XML ``name``).
        pid: PDG id of the particle (22, 211, 11).
        layers: every layer slot in order, empty ones (``r_edges == (0,)``) included.
        dataset: label of a built-in dataset (``1-photons``, ``2``, ...) or ``custom``.
        e_min: voxel threshold E_min in MeV (§1.1.6).
    """

    particle: str
    pid: int
    layers: tuple[BinningLayer, ...]
    dataset: str = "custom"
    e_min: float = 0.0
    kind = "calochallenge"

    @property
    def n_cells(self) -> int:
        return sum(layer.n_voxels for layer in self.layers)

    @property
    def offsets(self) -> np.ndarray:
        """(n_slots + 1,) cumulative voxel offsets; layer l is [offsets[l], offsets[l+1])."""
        return np.concatenate([[0], np.cumsum([layer.n_voxels for layer in self.layers])])

    @property
    def relevant_layers(self) -> list[int]:
        """Slots with n_r > 0, ascending."""
        return [k for k, layer in enumerate(self.layers) if layer.n_r > 0]

    @property
    def alpha_binned_layers(self) -> list[int]:
        return [k for k in self.relevant_layers if self.layers[k].n_alpha > 1]

    @property
    def layer_names(self) -> list[str]:
        return [f"layer_{k}" for k in self.relevant_layers]

    def layer_slice(self, slot: int) -> slice:
        off = self.offsets
        return slice(int(off[slot]), int(off[slot + 1]))

    def voxel_centres(self) -> dict[str, np.ndarray]:
        """Per-voxel (V,) arrays: ``layer`` slot, ``r`` centre (mm), ``alpha`` (rad), ``eta``,
        ``phi`` (mm) with η = r cos α and φ = r sin α, α_j = −π + (j + ½)·2π/n_α."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("layer", "r", "alpha", "eta", "phi")}
        for slot in self.relevant_layers:
            layer = self.layers[slot]
            edges = np.asarray(layer.r_edges, dtype=np.float64)
            r_c = 0.5 * (edges[:-1] + edges[1:])
            alpha = -np.pi + (np.arange(layer.n_alpha) + 0.5) * 2 * np.pi / layer.n_alpha
            rr, aa = np.meshgrid(r_c, alpha)  # (n_alpha, n_r): α-major, r fastest
            parts["layer"].append(np.full(rr.size, slot))
            parts["r"].append(rr.ravel())
            parts["alpha"].append(aa.ravel())
            parts["eta"].append((rr * np.cos(aa)).ravel())
            parts["phi"].append((rr * np.sin(aa)).ravel())
        return {k: np.concatenate(v) for k, v in parts.items()}

    def images(self, cells: np.ndarray) -> dict[str, np.ndarray]:
        """``(N, V)`` → ``{layer_name: (N, n_alpha, n_r)}`` for the relevant layers."""
        out = {}
        for slot, name in zip(self.relevant_layers, self.layer_names, strict=True):
            layer = self.layers[slot]
            out[name] = cells[:, self.layer_slice(slot)].reshape(-1, layer.n_alpha, layer.n_r)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "particle": self.particle,
            "pid": self.pid,
            "dataset": self.dataset,
            "e_min": self.e_min,
            "layers": [[lay.id, list(lay.r_edges), lay.n_alpha] for lay in self.layers],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaloChallengeBinning:
        layers = tuple(
            BinningLayer(int(i), tuple(map(float, e)), int(a)) for i, e, a in d["layers"]
        )
        return cls(
            d["particle"],
            int(d["pid"]),
            layers,
            d.get("dataset", "custom"),
            float(d.get("e_min", 0.0)),
        )


def _cc_layers(spec: dict[int, tuple[tuple[float, ...], int]], n_slots: int) -> tuple:
    return tuple(
        BinningLayer(k, tuple(float(e) for e in spec[k][0]), spec[k][1])
        if k in spec
        else BinningLayer(k, (0.0,), 1)
        for k in range(n_slots)
    )


_DS1_PHOTON = {
    0: ((0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
    1: ((0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, 50, 70, 90, 120, 150, 200), 10),
    2: ((0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200, 250, 300, 350, 400), 10),
    3: ((0, 50, 100, 200, 400, 600), 1),
    12: ((0, 100, 200, 400, 1000, 2000), 1),
}
_DS1_PION = {
    0: ((0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
    1: ((0, 1, 4, 7, 10, 15, 30, 50, 90, 150, 200), 10),
    2: ((0, 5, 10, 20, 30, 50, 80, 130, 200, 300, 400), 10),
    3: ((0, 50, 100, 200, 400, 600), 1),
    12: ((0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 1000, 2000), 10),
    13: ((0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 600, 1000, 2000), 10),
    14: ((0, 50, 100, 150, 200, 250, 300, 400, 600, 1000, 2000), 1),
}
E_MIN_DS23 = 0.5e-3 / 0.033  # MeV: 0.5 keV Si threshold over the sampling fraction 0.033


def _uniform_layers(n_layers: int, n_r: int, step: float, n_alpha: int) -> tuple:
    edges = tuple(round(i * step, 6) for i in range(n_r + 1))
    return tuple(BinningLayer(k, edges, n_alpha) for k in range(n_layers))


BINNINGS: dict[str, CaloChallengeBinning] = {
    "1-photons": CaloChallengeBinning("photon", 22, _cc_layers(_DS1_PHOTON, 24), "1-photons", 1.0),
    "1-pions": CaloChallengeBinning("pion", 211, _cc_layers(_DS1_PION, 24), "1-pions", 1.0),
    "2": CaloChallengeBinning("electron", 11, _uniform_layers(45, 9, 4.65, 16), "2", E_MIN_DS23),
    "3": CaloChallengeBinning("electron", 11, _uniform_layers(45, 18, 2.325, 50), "3", E_MIN_DS23),
}


def binning_for_voxels(n_voxels: int) -> CaloChallengeBinning:
    """The built-in binning with ``n_voxels`` voxels (368, 533, 6480 or 40500)."""
    for binning in BINNINGS.values():
        if binning.n_cells == n_voxels:
            return binning
    known = ", ".join(f"{b.n_cells} (dataset {k})" for k, b in BINNINGS.items())
    raise DetganError(
        f"no built-in CaloChallenge binning has {n_voxels} voxels (known: {known}); "
        "pass the dataset's binning XML file"
    )


# --------------------------------------------------------------------------- grids


@dataclasses.dataclass(frozen=True)
class GridLayer:
    """A Cartesian layer of ``nx × ny`` cells of ``dx × dy`` mm centred on (0, 0)."""

    name: str
    nx: int
    ny: int
    dx: float
    dy: float

    @property
    def n_cells(self) -> int:
        return self.nx * self.ny

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(nx,), (ny,) cell-centre coordinates in mm."""
        x = (np.arange(self.nx) + 0.5 - self.nx / 2) * self.dx
        y = (np.arange(self.ny) + 0.5 - self.ny / 2) * self.dy
        return x, y


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Per-layer Cartesian grids flattened layer by layer, each row-major (x, y).

    Attributes:
        name: layout name (``calogan``, ``lhcb-ecal``, ``atlas-cluster``, ...).
        layers: the layers in flat order.
        overflow: whether the format records the energy outside each layer's window.
        angle_scale: mm per unit of η and φ for (η, φ) layouts (ATLAS), else 0.
    """

    name: str
    layers: tuple[GridLayer, ...]
    overflow: bool = False
    angle_scale: float = 0.0
    kind = "grid"

    @property
    def n_cells(self) -> int:
        return sum(layer.n_cells for layer in self.layers)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([layer.n_cells for layer in self.layers])])

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def relevant_layers(self) -> list[int]:
        return list(range(len(self.layers)))

    def layer_slice(self, slot: int) -> slice:
        off = self.offsets
        return slice(int(off[slot]), int(off[slot + 1]))

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(V,), (V,) cell-centre coordinates (mm) along the first and second axis."""
        xs, ys = [], []
        for layer in self.layers:
            x, y = layer.centres()
            xx, yy = np.meshgrid(x, y, indexing="ij")
            xs.append(xx.ravel())
            ys.append(yy.ravel())
        return np.concatenate(xs), np.concatenate(ys)

    def images(self, cells: np.ndarray) -> dict[str, np.ndarray]:
        """``(N, V)`` → ``{layer_name: (N, nx, ny)}``."""
        return {
            layer.name: cells[:, self.layer_slice(k)].reshape(-1, layer.nx, layer.ny)
            for k, layer in enumerate(self.layers)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "overflow": self.overflow,
            "angle_scale": self.angle_scale,
            "layers": [[la.name, la.nx, la.ny, la.dx, la.dy] for la in self.layers],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GridLayout:
        layers = tuple(
            GridLayer(n, int(a), int(b), float(x), float(y)) for n, a, b, x, y in d["layers"]
        )
        return cls(
            d["name"], layers, bool(d.get("overflow", False)), float(d.get("angle_scale", 0))
        )


Layout = CaloChallengeBinning | GridLayout


def layout_from_dict(d: dict[str, Any]) -> Layout:
    """Rebuild a layout from its ``to_dict()`` (as stored in file attributes)."""
    try:
        if d["kind"] == "calochallenge":
            return CaloChallengeBinning.from_dict(d)
        if d["kind"] == "grid":
            return GridLayout.from_dict(d)
    except (KeyError, TypeError, ValueError):
        pass
    raise DetganError("stored cell layout description is invalid; regenerate the file")


def _atlas_layout(
    name: str,
    middle: tuple[int, int],
    strip: tuple[int, int],
    pre: tuple[int, int],
    back: tuple[int, int],
) -> GridLayout:
    s = ATLAS_RADIUS_MM
    layers = (
        GridLayer("middle", *middle, 0.025 * s, 0.025 * s),
        GridLayer("strip", *strip, 0.003125 * s, 0.1 * s),
        GridLayer("presampler", *pre, 0.025 * s, 0.1 * s),
        GridLayer("back", *back, 0.05 * s, 0.025 * s),
    )
    return GridLayout(name, layers, overflow=False, angle_scale=s)


ATLAS_89 = _atlas_layout("atlas-cluster", (3, 7), (24, 2), (3, 2), (2, 7))
ATLAS_247 = _atlas_layout("atlas-cluster-247", (7, 11), (56, 2), (7, 2), (4, 11))
CALOGAN = GridLayout(
    "calogan",
    (
        GridLayer("layer_0", 3, 96, 160.0, 5.0),
        GridLayer("layer_1", 12, 12, 40.0, 40.0),
        GridLayer("layer_2", 12, 6, 40.0, 80.0),
    ),
    overflow=True,
)
LHCB = GridLayout("lhcb-ecal", (GridLayer("ecal", 30, 30, 20.0, 20.0),))


# --------------------------------------------------------------------------- simulation geometries


@dataclasses.dataclass(frozen=True)
class CaloGeometry:
    """A layout placed in depth, with its medium, readout and default beam (calorimeter.md §3).

    Attributes:
        name: geometry name (``atlas-cluster``, ``calogan``, ...).
        layout: the cell layout, one entry of ``depths``/``noise``/``threshold`` per layer slot.
        medium: the effective medium (§1).
        depths: per layer slot ``(t_front, t_back)`` in X0 from the calorimeter front, or
            ``None`` for an empty CaloChallenge slot. Material between layers is dead.
        noise: per layer slot Gaussian electronic noise σ_n per cell, MeV.
        threshold: per layer slot readout threshold, MeV: cells with E < threshold are set to 0.
        particle: default particle (``photon``, ``electron``, ``positron``).
        spectrum: default spectrum, ``uniform``, ``log-uniform`` or ``discrete``.
        energy_range: (E_min, E_max) of continuous spectra, MeV.
        energies: the values of a discrete spectrum (MeV) and their relative ``weights``.
        incidence: ``normal`` (on the axis at the origin) or ``lhcb`` (random face point in
            ±55 mm, Gaussian angles of 20° in x–z and 10° in y–z).
        file_format: the format the geometry is written in by ``detgan simulate calo``.
    """

    name: str
    layout: Layout
    medium: Medium
    depths: tuple[tuple[float, float] | None, ...]
    noise: tuple[float, ...]
    threshold: tuple[float, ...]
    particle: str
    spectrum: str
    energy_range: tuple[float, float]
    file_format: str
    energies: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    incidence: str = "normal"

    @property
    def n_slots(self) -> int:
        return len(self.layout.layers)

    def to_dict(self) -> dict[str, Any]:
        """Everything that defines the geometry, JSON-serialisable (stored in output files)."""
        return {
            "name": self.name,
            "layout": self.layout.to_dict(),
            "medium": self.medium.to_dict(),
            "depths_x0": [list(d) if d else None for d in self.depths],
            "noise_mev": list(self.noise),
            "threshold_mev": list(self.threshold),
            "particle": self.particle,
            "spectrum": self.spectrum,
            "energy_range_mev": list(self.energy_range),
            "energies_mev": list(self.energies),
            "weights": list(self.weights),
            "incidence": self.incidence,
            "file_format": self.file_format,
        }


GEV = 1000.0
_ATLAS_DEPTHS = ((6.8, 22.8), (2.5, 6.8), (2.0, 2.5), (22.8, 24.8))  # middle, strip, ps, back
_ATLAS_THRESHOLDS = (200.0, 60.0, 120.0, 200.0)  # MeV, formats_and_metrics.md §1.4


def _atlas(layout: GridLayout) -> CaloGeometry:
    return CaloGeometry(
        layout.name,
        layout,
        MEDIA["pb-lar"],
        _ATLAS_DEPTHS,
        noise=tuple(t / 3 for t in _ATLAS_THRESHOLDS),
        threshold=_ATLAS_THRESHOLDS,
        particle="photon",
        spectrum="uniform",
        energy_range=(10 * GEV, 300 * GEV),
        file_format="atlas-cluster",
    )


def _ds1_photons() -> CaloGeometry:
    binning = BINNINGS["1-photons"]
    depth = {0: (2.0, 2.5), 1: (2.5, 6.8), 2: (6.8, 22.8), 3: (22.8, 24.8), 12: (24.8, 40.0)}
    n = len(binning.layers)
    counts = [10_000] * 11 + [5_000, 3_000, 2_000, 1_000]  # public file, §1.1.2
    return CaloGeometry(
        "calochallenge-1-photons",
        binning,
        MEDIA["pb-lar"],
        tuple(depth.get(k) for k in range(n)),
        noise=(0.0,) * n,
        threshold=(binning.e_min,) * n,
        particle="photon",
        spectrum="discrete",
        energy_range=(2.0**8, 2.0**22),
        energies=tuple(2.0**k for k in range(8, 23)),
        weights=tuple(float(c) for c in counts),
        file_format="calochallenge",
    )


def _ds2() -> CaloGeometry:
    binning = BINNINGS["2"]
    n = len(binning.layers)
    return CaloGeometry(
        "calochallenge-2",
        binning,
        MEDIA["w-si"],
        tuple((round(0.8 * k, 6), round(0.8 * (k + 1), 6)) for k in range(n)),
        noise=(0.0,) * n,
        threshold=(binning.e_min,) * n,
        particle="electron",
        spectrum="log-uniform",
        energy_range=(1 * GEV, 1000 * GEV),
        file_format="calochallenge",
    )


def _calogan() -> CaloGeometry:
    x0 = MEDIA["pb-lar"].x0
    bounds_mm = (0.0, 90.0, 437.0, 480.0)  # 90, 347 and 43 mm layers (CaloGAN)
    depths = tuple((bounds_mm[k] / x0, bounds_mm[k + 1] / x0) for k in range(3))
    return CaloGeometry(
        "calogan",
        CALOGAN,
        MEDIA["pb-lar"],
        depths,
        noise=(0.0,) * 3,
        threshold=(0.0,) * 3,
        particle="positron",
        spectrum="uniform",
        energy_range=(1 * GEV, 100 * GEV),
        file_format="calogan",
    )


def _lhcb() -> CaloGeometry:
    return CaloGeometry(
        "lhcb-ecal",
        LHCB,
        MEDIA["pb-sci"],
        ((0.0, 25.0),),
        noise=(0.0,),
        threshold=(0.0,),
        particle="electron",
        spectrum="log-uniform",
        energy_range=(1 * GEV, 100 * GEV),
        incidence="lhcb",
        file_format="lhcb",
    )


GEOMETRIES: dict[str, CaloGeometry] = {
    g.name: g
    for g in (_atlas(ATLAS_89), _atlas(ATLAS_247), _calogan(), _lhcb(), _ds1_photons(), _ds2())
}


def get_geometry(name: str) -> CaloGeometry:
    """The named geometry of :data:`GEOMETRIES` (``DetganError`` listing the choices otherwise)."""
    return pick_preset(GEOMETRIES, name, "geometry")


# --------------------------------------------------------------------------- spot binning


def _common_step(edges: np.ndarray, max_cells: int = 1 << 22) -> float:
    """Largest step g with every edge an integer multiple of g (so a table lookup is exact)."""
    diffs = np.diff(np.unique(edges))
    smallest = float(diffs.min()) if len(diffs) else 1.0
    for k in range(1, 4097):
        g = smallest / k
        ratio = edges / g
        if np.allclose(ratio, np.round(ratio), rtol=0, atol=1e-6) and edges.max() / g < max_cells:
            return g
    raise ValueError(f"edges {edges.tolist()} have no common step for an exact lookup table")


def _step_table(edges: np.ndarray, labels: np.ndarray, outside: int) -> tuple[float, np.ndarray]:
    """Lookup table for ``floor(v / g) + 1`` → label of the bin [edges[k], edges[k+1]) holding v.

    ``labels[k]`` labels bin k; entries 0 and -1 of the table (v < 0, v ≥ edges[-1]) and any gap
    are ``outside``. Returns (1/g, table).
    """
    g = _common_step(edges)
    n = int(round(edges[-1] / g))
    mids = (np.arange(n) + 0.5) * g
    k = np.searchsorted(edges, mids, side="right") - 1
    inside = (k >= 0) & (k < len(labels))
    table = np.full(n + 2, outside, dtype=np.int64)
    table[1:-1][inside] = labels[k[inside]]
    return 1.0 / g, table


def _index(v: np.ndarray, low: np.ndarray, inv_step: np.ndarray) -> np.ndarray:
    """floor((v − low)/step) as int64, clipped to [−1, 2³⁰] so far-away spots cast safely."""
    k = np.floor((v - low) * inv_step)
    np.clip(k, -1, 2**30, out=k)
    return k.astype(np.int64)


class SpotBinner:
    """Maps energy-spot positions to slots of a ``(V + L + 1)`` per-event histogram.

    Slots 0 … V−1 are the cells of the layout, V + l collects the energy of layer slot l that
    falls outside its window (overflow), V + L the energy outside every layer (lost: dead
    material, longitudinal leakage). Built once per geometry; every method is vectorised over
    spots with table lookups (no per-layer Python loops).
    """

    def __init__(self, geometry: CaloGeometry) -> None:
        self.geometry = geometry
        layout = geometry.layout
        self.n_cells = layout.n_cells
        self.n_slots = geometry.n_slots
        self.n_hist = self.n_cells + self.n_slots + 1
        self._depth_tables()
        nl = self.n_slots + 1  # per-slot parameters plus one "no layer" entry
        self.offset = np.zeros(nl, np.int64)
        self.offset[:-1] = layout.offsets[:-1]
        if layout.kind == "grid":
            self._grid_tables(layout, nl)
        else:
            self._polar_tables(layout, nl)

    def _depth_tables(self) -> None:
        spans = [(d[0], d[1], k) for k, d in enumerate(self.geometry.depths) if d is not None]
        spans.sort()
        edges, labels = [0.0], []
        for front, back, slot in spans:
            if front > edges[-1] + 1e-9:  # dead material before this layer
                edges.append(front)
                labels.append(self.n_slots)
            edges.append(back)
            labels.append(slot)
        self.inv_dt, self.depth_table = _step_table(
            np.asarray(edges), np.asarray(labels), self.n_slots
        )

    def _grid_tables(self, layout: GridLayout, nl: int) -> None:
        self.nx = np.zeros(nl, np.int64)
        self.ny = np.zeros(nl, np.int64)
        self.inv_dx = np.ones(nl, np.float32)
        self.inv_dy = np.ones(nl, np.float32)
        self.x_lo = np.zeros(nl, np.float32)
        self.y_lo = np.zeros(nl, np.float32)
        for k, layer in enumerate(layout.layers):
            self.nx[k], self.ny[k] = layer.nx, layer.ny
            self.inv_dx[k], self.inv_dy[k] = 1 / layer.dx, 1 / layer.dy
            self.x_lo[k], self.y_lo[k] = -layer.nx * layer.dx / 2, -layer.ny * layer.dy / 2

    def _polar_tables(self, layout: CaloChallengeBinning, nl: int) -> None:
        self.n_r = np.zeros(nl, np.int64)
        self.n_alpha = np.zeros(nl, np.int64)
        self.inv_dr = np.ones(nl, np.float32)
        self.r_base = np.zeros(nl, np.int64)
        self.r_top = np.zeros(nl, np.int64)
        tables = [np.full(2, -1, np.int64)]  # the "no layer" entry: always outside
        base = 2
        for k in layout.relevant_layers:
            layer = layout.layers[k]
            inv, table = _step_table(np.asarray(layer.r_edges), np.arange(layer.n_r), -1)
            self.n_r[k], self.n_alpha[k], self.inv_dr[k] = layer.n_r, layer.n_alpha, inv
            self.r_base[k], self.r_top[k] = base, len(table) - 2
            tables.append(table)
            base += len(table)
        self.r_table = np.concatenate(tables)

    def layer_of(self, depth: np.ndarray) -> np.ndarray:
        """(S,) depth in X0 → (S,) layer slot, ``L`` where no layer is."""
        k = np.floor(depth * np.float32(self.inv_dt))
        np.clip(k, -1, len(self.depth_table) - 2, out=k)
        return np.take(self.depth_table, k.astype(np.int64) + 1)

    def bin_xy(self, x: np.ndarray, y: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """(S,) x, y (mm, transverse) and depth (X0) → (S,) histogram slots (grid layouts)."""
        layer = self.layer_of(depth)
        ix = _index(x, np.take(self.x_lo, layer), np.take(self.inv_dx, layer))
        iy = _index(y, np.take(self.y_lo, layer), np.take(self.inv_dy, layer))
        nx, ny = np.take(self.nx, layer), np.take(self.ny, layer)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        cell = np.take(self.offset, layer) + ix * ny + iy
        return np.where(inside, cell, self.n_cells + layer)

    def bin_polar(self, r: np.ndarray, alpha_frac: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """(S,) radius r (mm), (α + π)/2π in [0, 1) and depth (X0) → (S,) slots (CaloChallenge)."""
        if self.geometry.layout.kind != "calochallenge":
            raise TypeError("bin_polar needs a CaloChallenge layout")
        layer = self.layer_of(depth)
        kf = np.floor(r * np.take(self.inv_dr, layer))
        k = np.minimum(kf, np.take(self.r_top, layer).astype(kf.dtype)).astype(np.int64)
        ir = np.take(self.r_table, k + 1 + np.take(self.r_base, layer))
        n_alpha = np.take(self.n_alpha, layer)
        ja = np.minimum((alpha_frac * n_alpha).astype(np.int64), n_alpha - 1)
        cell = np.take(self.offset, layer) + ja * np.take(self.n_r, layer) + ir
        return np.where(ir >= 0, cell, self.n_cells + layer)

    def bin_cartesian_polar(self, x: np.ndarray, y: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Polar binning of Cartesian positions: α = atan2(y, x) (η = r cos α, φ = r sin α)."""
        frac = (np.arctan2(y, x) + np.float32(np.pi)) * np.float32(0.5 / np.pi)
        np.clip(frac, 0, np.float32(1 - 1e-7), out=frac)
        return self.bin_polar(np.hypot(x, y), frac, depth)
