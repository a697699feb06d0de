"""CaloGAN HDF5 files (Paganini, de Oliveira, Nachman, arXiv:1712.10321; formats §1.2).

Datasets: ``energy`` (N, 1) in **GeV**, ``layer_0`` (N, 3, 96), ``layer_1`` (N, 12, 12),
``layer_2`` (N, 12, 6) and ``overflow`` (N, 3), all cell energies in MeV; axis order [x, y].
In memory the three layers are one flat 504-cell vector (layer 0 cells 0–287, layer 1 288–431,
layer 2 432–503, each row-major) with the layout :data:`detgan.sim.geometry.CALOGAN`, the
incident energy in MeV and the overflow as the ``overflow`` condition.
"""

from __future__ import annotations

import json
import os
from typing import Any

import h5py
import numpy as np

from detgan.io.native import H5Writer, check_read_size, open_h5, root_names
from detgan.io.showers import Showers, check_real, describe_events, nonfinite_events
from detgan.sim.geometry import CALOGAN, Layout
from detgan.utils import DetganError

__all__ = ["read", "count", "Writer", "LAYERS"]

LAYERS = {f"layer_{k}": (layer.nx, layer.ny) for k, layer in enumerate(CALOGAN.layers)}
GEV = 1000.0


def _check_layout(f: h5py.File, path: Any) -> tuple[int, bool]:
    """Datasets present with the CaloGAN shapes and equal N; returns (N, has overflow)."""
    lengths = {}
    for name, shape in {"energy": None, **LAYERS, "overflow": (3,)}.items():
        if name not in f or not isinstance(f[name], h5py.Dataset):
            if name == "overflow":
                continue
            have = ", ".join(root_names(f)) or "none"
            raise DetganError(
                f"file '{path}' has no dataset '{name}' (it has: {have}); a CaloGAN file needs "
                "'energy', 'layer_0', 'layer_1', 'layer_2'"
            )
        ds = f[name]
        check_real(path, name, ds.dtype)
        ok = (
            ds.ndim in (1, 2) and ds.shape[1:] in ((), (1,))
            if shape is None
            else ds.shape[1:] == shape
        )
        if not ok:
            want = "(N, 1)" if shape is None else f"(N, {', '.join(map(str, shape))})"
            raise DetganError(
                f"file '{path}': dataset '{name}' has shape {ds.shape}, expected {want}"
            )
        lengths[name] = ds.shape[0]
    if len(set(lengths.values())) != 1:
        raise DetganError(f"file '{path}': datasets have different numbers of events {lengths}")
    if lengths["energy"] == 0:
        raise DetganError(f"file '{path}' holds no events")
    return lengths["energy"], "overflow" in lengths


def count(path: str | os.PathLike) -> int:
    """Number of events in a CaloGAN file (layout validated)."""
    with open_h5(path) as f:
        return _check_layout(f, path)[0]


def read(
    path: str | os.PathLike,
    *,
    start: int = 0,
    stop: int | None = None,
    drop_nonfinite: bool = False,
) -> Showers:
    """Read events ``start:stop`` of a CaloGAN file; energy converted GeV → MeV.

    A missing ``overflow`` is read as zeros and flagged in ``meta["overflow_missing"]``.
    Non-finite values are an error unless ``drop_nonfinite``; energies must be > 0.
    """
    with open_h5(path) as f:
        n, has_overflow = _check_layout(f, path)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        check_read_size(f, ["energy", *LAYERS], start, stop)
        try:
            energy = f["energy"][start:stop].reshape(-1).astype(np.float64) * GEV
            parts = [f[name][start:stop].reshape(len(energy), -1) for name in LAYERS]
            overflow = f["overflow"][start:stop] if has_overflow else np.zeros((len(energy), 3))
        except OSError:
            raise DetganError(f"file '{path}' is corrupt or truncated; regenerate it") from None
    cells = np.concatenate(parts, axis=1)
    if cells.dtype.kind != "f":
        cells = cells.astype(np.float64)
    keep = np.ones(len(energy), dtype=bool)
    for name, array in (("energy", energy), ("layers", cells), ("overflow", overflow)):
        bad = nonfinite_events(array)
        if len(bad) and not drop_nonfinite:
            raise DetganError(
                f"file '{path}': dataset '{name}' has NaN or inf in {describe_events(bad, start)}; "
                "fix the file or drop them (--drop-nonfinite)"
            )
        keep[bad] = False
    energy, cells, overflow = energy[keep], cells[keep], overflow[keep]
    if (energy <= 0).any():
        bad = np.flatnonzero(energy <= 0)
        raise DetganError(
            f"file '{path}': dataset 'energy' has values <= 0 in {describe_events(bad, start)}; "
            "incident energies must be > 0 GeV"
        )
    meta = {
        "source_format": "calogan",
        "path": str(path),
        "attrs": attrs,
        "notices": [],
        "overflow_missing": not has_overflow,
        "negative_cells": int((cells < 0).sum()),
        "dropped_nonfinite": int((~keep).sum()),
        "n_file_events": n,
    }
    return Showers(energy, cells, CALOGAN, {"overflow": overflow.astype(np.float64)}, meta)


class Writer:
    """Stream showers into a CaloGAN file: five datasets, float32, gzip, atomic, energy in GeV.

    Showers without an ``overflow`` condition are written with zero overflow and the attribute
    ``overflow_modelled = False``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_events: int,
        layout: Layout,
        attrs: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
    ) -> None:
        if layout != CALOGAN:
            raise DetganError(
                f"cannot write '{getattr(layout, 'name', layout.kind)}' showers as CaloGAN: "
                "the cell layouts differ; use --to native"
            )
        specs = {
            "energy": ((1,), "float32"),
            **{k: (v, "float32") for k, v in LAYERS.items()},
            "overflow": ((3,), "float32"),
        }
        self._attrs = {
            **(attrs or {}),
            "units": json.dumps(
                {
                    "energy": "GeV",
                    "layer_0": "MeV",
                    "layer_1": "MeV",
                    "layer_2": "MeV",
                    "overflow": "MeV",
                }
            ),
        }
        self._args = (path, n_events, specs)
        self._overwrite, self._start, self._h5 = overwrite, 0, None

    def __enter__(self) -> Writer:
        return self

    def append(self, showers: Showers) -> None:
        if showers.layout != CALOGAN:
            raise DetganError("cannot write showers of a different layout into a CaloGAN file")
        n = len(showers)
        overflow = showers.conditions.get("overflow")
        if self._h5 is None:  # opened on the first batch, when we know whether overflow exists
            self._attrs["overflow_modelled"] = overflow is not None
            self._h5 = H5Writer(
                *self._args, self._attrs, overwrite=self._overwrite, compression="gzip"
            )
            self._h5.__enter__()
        for name, array in (("energy", showers.energy), ("cells", showers.cells)):
            bad = nonfinite_events(array)
            if len(bad):
                raise DetganError(f"refusing to write NaN or inf {name} in {describe_events(bad)}")
        arrays = {
            "energy": (showers.energy / GEV)[:, None],
            "overflow": np.zeros((n, 3)) if overflow is None else overflow,
        }
        for k, name in enumerate(LAYERS):
            arrays[name] = showers.cells[:, CALOGAN.layer_slice(k)].reshape(n, *LAYERS[name])
        self._h5.write(self._start, arrays)
        self._start += n

    def __exit__(self, *exc: Any) -> None:
        if self._h5 is None:
            if exc[0] is None:
                raise RuntimeError("no showers were written")
            return
        self._h5.__exit__(*exc)
