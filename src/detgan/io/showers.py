"""Calorimeter showers in memory (:class:`Showers`), the native showers file and format dispatch.

The :class:`Showers` object is what every calorimeter reader returns, every writer takes and the
simulator (:mod:`detgan.sim.calorimeter`) produces. Units are the project's internal units
(``formats_and_metrics.md`` §0): energies in **MeV**, lengths in **mm**, angles in **rad**;
readers convert at the boundary.

Fields
------
``energy``      (N,) float64 — incident (true) particle energy, MeV. For LHCb files it is |p|.
``cells``       (N, V) float32 or float64 — cell/voxel energies, MeV, flat in the layout's order
                (CaloChallenge: (layer, α, r), r fastest; grids: layer by layer, row-major (x, y)).
``layout``      the cell layout, :class:`~detgan.sim.geometry.CaloChallengeBinning` or
                :class:`~detgan.sim.geometry.GridLayout`: ``n_cells``, ``layer_names``,
                ``layer_slice(slot)``, ``images(cells)`` (per-layer arrays), coordinates
                (``voxel_centres()`` or ``cell_centres()``, mm).
``conditions``  dict of event-major arrays (all optional):

                ``overflow`` (N, L) MeV — energy outside each layer's window (CaloGAN);
                ``momentum`` (N, 3) MeV — (p_x, p_y, p_z) at the face (LHCb);
                ``point`` (N, 3) mm — face point (x, y, z) (LHCb);
                ``pdg`` (N,) int — particle id;
                ``cell_eta``, ``cell_phi`` (N, V) — absolute cell-centre η and φ (rad) (ATLAS);
                ``total_energy_sci``, ``total_energy_absorb`` (N,) — LHCb totals, carried through.
``meta``        dict: ``source_format`` (``calochallenge``, ``calogan``, ``lhcb``, ``native``,
                ``simulation``), ``units`` (name → unit), ``path``, ``attrs`` (file provenance),
                ``notices`` (list of str), ``negative_cells`` (count), ``dropped_nonfinite``
                (count), ``overflow_missing`` (bool, CaloGAN), ``pitch_mm`` (LHCb), ``e_min``.

Formats: ``calochallenge`` (:mod:`detgan.io.calochallenge`), ``calogan``
(:mod:`detgan.io.calogan`), ``lhcb`` (:mod:`detgan.io.lhcb`) and ``native`` (this module: an
HDF5 file with ``cells``, ``energy`` and one dataset per condition, the layout as a JSON
attribute; the ATLAS clusters are stored this way). :func:`load_showers` detects the format,
:func:`save_showers` writes one, :func:`showers_writer` streams one batch after another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from detgan.io.native import H5Writer, check_read_size, open_h5, root_names
from detgan.sim.geometry import Layout, layout_from_dict
from detgan.utils import DetganError

__all__ = [
    "Showers",
    "FORMATS",
    "UNITS",
    "detect_format",
    "load_showers",
    "iter_showers",
    "count_events",
    "save_showers",
    "showers_writer",
    "natural_format",
    "nonfinite_events",
    "describe_events",
    "read_native",
    "NativeWriter",
]

FORMATS = ("calochallenge", "calogan", "lhcb", "native")

#: Units of the in-memory fields (formats_and_metrics.md §0.1).
UNITS = {
    "energy": "MeV",
    "cells": "MeV",
    "overflow": "MeV",
    "momentum": "MeV",
    "point": "mm",
    "cell_eta": "rad (eta)",
    "cell_phi": "rad",
    "pdg": "",
    "lengths": "mm",
}


@dataclasses.dataclass
class Showers:
    """N calorimeter showers in internal units; see the module docstring for every field.

    Shapes: ``energy`` (N,), ``cells`` (N, V) with V = ``layout.n_cells``, each condition (N, …).
    """

    energy: np.ndarray
    cells: np.ndarray
    layout: Layout
    conditions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.energy = np.asarray(self.energy, dtype=np.float64).reshape(-1)
        n = len(self.energy)
        if self.cells.ndim != 2 or self.cells.shape != (n, self.layout.n_cells):
            raise DetganError(
                f"showers: cells have shape {self.cells.shape}, expected ({n}, "
                f"{self.layout.n_cells}) for layout '{_layout_name(self.layout)}'"
            )
        for key, value in self.conditions.items():
            if len(value) != n:
                raise DetganError(f"showers: condition '{key}' has {len(value)} events, not {n}")
        self.meta.setdefault("units", dict(UNITS))

    def __len__(self) -> int:
        return len(self.energy)

    @property
    def n_cells(self) -> int:
        return self.layout.n_cells

    def images(self) -> dict[str, np.ndarray]:
        """Per-layer arrays: grids (N, nx, ny), CaloChallenge layers (N, n_α, n_r)."""
        return self.layout.images(self.cells)

    def select(self, index: slice | np.ndarray) -> Showers:
        """A new object holding the events ``index`` (slice, integer or boolean array)."""
        return Showers(
            self.energy[index],
            self.cells[index],
            self.layout,
            {k: v[index] for k, v in self.conditions.items()},
            dict(self.meta),
        )

    @staticmethod
    def concat(parts: Sequence[Showers]) -> Showers:
        """Concatenate events of showers with the same layout and condition names."""
        first = parts[0]
        if any(p.layout != first.layout for p in parts):
            raise DetganError("cannot concatenate showers with different cell layouts")
        conditions = {k: np.concatenate([p.conditions[k] for p in parts]) for k in first.conditions}
        return Showers(
            np.concatenate([p.energy for p in parts]),
            np.concatenate([p.cells for p in parts]),
            first.layout,
            conditions,
            dict(first.meta),
        )


def _layout_name(layout: Layout) -> str:
    return getattr(layout, "dataset", None) or getattr(layout, "name", "custom")


def natural_format(layout: Layout) -> str:
    """The interchange format a layout is normally written in."""
    if layout.kind == "calochallenge":
        return "calochallenge"
    return {"calogan": "calogan", "lhcb-ecal": "lhcb"}.get(layout.name, "native")


# --------------------------------------------------------------------------- validation helpers


def nonfinite_events(array: np.ndarray) -> np.ndarray:
    """Indices of events (rows) holding NaN or ±inf anywhere."""
    if array.dtype.kind != "f" or array.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return np.flatnonzero(bad)


def describe_events(index: np.ndarray, offset: int = 0, first: int = 5) -> str:
    """``"3 events (first: 0, 5, 7)"`` for error messages."""
    shown = ", ".join(str(int(i) + offset) for i in index[:first])
    return f"{len(index)} event{'s' if len(index) != 1 else ''} (first: {shown})"


def check_real(path: str | os.PathLike, name: str, dtype: np.dtype) -> None:
    """Refuse datasets that are not real numbers."""
    if np.dtype(dtype).kind not in "fiu":
        raise DetganError(
            f"file '{path}': dataset '{name}' has dtype {dtype}, expected real numbers "
            "(float32 or float64)"
        )


# --------------------------------------------------------------------------- native layout


NATIVE_FORMAT = "detgan-showers"


def _native_attrs(layout: Layout, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(attrs or {})
    out.update(format=NATIVE_FORMAT, layout=json.dumps(layout.to_dict()), units=json.dumps(UNITS))
    return out


class NativeWriter:
    """Stream showers into a native HDF5 file: ``cells`` (N, V), ``energy`` (N,), conditions.

    ``conditions`` maps each condition name to its (per-event shape, dtype).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_events: int,
        layout: Layout,
        conditions: Mapping[str, tuple[tuple[int, ...], Any]],
        attrs: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
        dtype: str = "float32",
    ) -> None:
        specs = {"cells": ((layout.n_cells,), dtype), "energy": ((), "float64"), **conditions}
        self._h5 = H5Writer(
            path,
            n_events,
            specs,
            _native_attrs(layout, attrs),
            overwrite=overwrite,
            compression="gzip",
        )
        self.layout, self._start = layout, 0

    def __enter__(self) -> NativeWriter:
        self._h5.__enter__()
        return self

    def append(self, showers: Showers) -> None:
        if showers.layout != self.layout:
            raise DetganError("cannot write showers of a different layout into this file")
        arrays = {"cells": showers.cells, "energy": showers.energy, **showers.conditions}
        self._h5.write(self._start, arrays)
        self._start += len(showers)

    def __exit__(self, *exc: Any) -> None:
        self._h5.__exit__(*exc)


def read_native(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> Showers:
    """Read a native showers file (validated: layout, shapes, finiteness, energies > 0)."""
    with open_h5(path) as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if attrs.get("format") != NATIVE_FORMAT or "layout" not in attrs:
            raise DetganError(f"file '{path}' is not a detgan showers file (no 'format' attribute)")
        try:
            layout = layout_from_dict(json.loads(attrs["layout"]))
        except json.JSONDecodeError:
            raise DetganError(
                f"file '{path}': layout attribute is corrupt; regenerate it"
            ) from None
        for name in ("cells", "energy"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise DetganError(f"file '{path}' has no dataset '{name}'; regenerate it")
            check_real(path, name, f[name].dtype)
        n = f["energy"].shape[0] if f["energy"].ndim else 0
        if n == 0:
            raise DetganError(f"file '{path}' holds no events")
        for name, ds in f.items():
            if isinstance(ds, h5py.Dataset) and (ds.ndim == 0 or ds.shape[0] != n):
                raise DetganError(
                    f"file '{path}': dataset '{name}' has shape {ds.shape} but 'energy' has {n} "
                    "events; the datasets have different lengths, regenerate the file"
                )
        check_read_size(f, list(f), start, stop)
        try:
            data = {k: f[k][start:stop] for k in f if isinstance(f[k], h5py.Dataset)}
        except OSError:
            raise DetganError(f"file '{path}' is corrupt or truncated; regenerate it") from None
    cells, energy = data.pop("cells"), data.pop("energy")
    if cells.ndim != 2 or cells.shape[1] != layout.n_cells:
        raise DetganError(
            f"file '{path}': dataset 'cells' has shape {cells.shape}, "
            f"expected (N, {layout.n_cells})"
        )
    for name, array in (("cells", cells), ("energy", energy), *data.items()):
        bad = nonfinite_events(array)
        if len(bad):
            raise DetganError(
                f"file '{path}': dataset '{name}' has NaN or inf in {describe_events(bad, start)}; "
                "fix or regenerate the file"
            )
    if (energy <= 0).any():
        raise DetganError(
            f"file '{path}': dataset 'energy' has values <= 0; energies must be > 0 MeV"
        )
    meta = {"source_format": "native", "path": str(path), "attrs": attrs}
    return Showers(energy, cells, layout, data, meta)


# --------------------------------------------------------------------------- dispatch


def detect_format(path: str | os.PathLike) -> str:
    """``calochallenge``, ``calogan``, ``lhcb`` or ``native`` from the file's content."""
    path = Path(path)
    if path.suffix == ".npz":
        return "lhcb"
    with open_h5(path) as f:
        names = set(root_names(f))
        if f.attrs.get("format") in (NATIVE_FORMAT, NATIVE_FORMAT.encode()):
            return "native"
    if {"showers", "incident_energies"} & names:
        return "calochallenge"
    if {"layer_0", "layer_1", "layer_2"} & names:
        return "calogan"
    raise DetganError(
        f"file '{path}' is not a known showers format "
        f"(datasets: {', '.join(sorted(names)) or 'none'}); "
        "expected CaloChallenge, CaloGAN, LHCb .npz or a detgan showers file"
    )


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise DetganError(f"unknown showers format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    return fmt


def load_showers(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    **options: Any,
) -> Showers:
    """Load (events ``start:stop`` of) a showers file, detecting the format when not given.

    ``options`` go to the format's reader: ``binning`` and ``drop_nonfinite`` (CaloChallenge),
    ``drop_nonfinite`` (CaloGAN, LHCb), ``pitch_mm`` (LHCb).
    """
    fmt = _check_format(format or detect_format(path))
    if fmt == "native":
        return read_native(path, start, stop)
    module = _module(fmt)
    return module.read(path, start=start, stop=stop, **options)


def iter_showers(
    path: str | os.PathLike, chunk_size: int = 10_000, format: str | None = None, **options: Any
) -> Iterator[Showers]:
    """Yield consecutive chunks of a file as :class:`Showers` (bounded memory for HDF5)."""
    fmt = _check_format(format or detect_format(path))
    if fmt == "lhcb":  # an .npz member is read whole anyway
        yield load_showers(path, fmt, **options)
        return
    total = count_events(path, fmt)
    for start in range(0, total, chunk_size):
        yield load_showers(path, fmt, start=start, stop=start + chunk_size, **options)


def count_events(path: str | os.PathLike, format: str | None = None) -> int:
    """Number of events in a showers file (without reading the cells)."""
    fmt = _check_format(format or detect_format(path))
    if fmt != "native":
        return _module(fmt).count(path)
    with open_h5(path) as f:
        if "energy" not in f:
            raise DetganError(f"file '{path}' has no dataset 'energy'; regenerate it")
        return len(f["energy"])


def _module(fmt: str):
    import importlib

    return importlib.import_module(f"detgan.io.{fmt}")


@contextlib.contextmanager
def showers_writer(
    path: str | os.PathLike,
    format: str,
    n_events: int,
    layout: Layout,
    attrs: Mapping[str, Any] | None = None,
    *,
    conditions: Mapping[str, tuple] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Iterator[Any]:
    """Open a streaming writer; call ``.append(showers)`` until ``n_events`` are written.

    The file appears under ``path`` only when all events were written (atomic). ``conditions``
    (name → (per-event shape, dtype)) is needed by the native format only.
    """
    fmt = _check_format(format)
    if fmt == "native":
        writer = NativeWriter(
            path, n_events, layout, conditions or {}, attrs, overwrite=overwrite, **options
        )
    else:
        writer = _module(fmt).Writer(path, n_events, layout, attrs, overwrite=overwrite, **options)
    with writer:
        yield writer


def save_showers(
    showers: Showers,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Write ``showers`` to ``path`` in ``format`` (default: the layout's natural format)."""
    fmt = format or natural_format(showers.layout)
    specs = {k: (v.shape[1:], v.dtype) for k, v in showers.conditions.items()}
    with showers_writer(
        path,
        fmt,
        len(showers),
        showers.layout,
        attrs,
        conditions=specs,
        overwrite=overwrite,
        **options,
    ) as writer:
        writer.append(showers)
    return Path(path)
