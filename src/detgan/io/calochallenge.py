"""CaloChallenge 2022 HDF5 files and binning XML (``formats_and_metrics.md`` §1.1).

A file holds ``incident_energies`` (N, 1) and ``showers`` (N, V), both MeV, voxels flat in
(layer, α, r) order with r fastest; provenance goes into root attributes only, so the public
CaloChallenge evaluation (Krause, Faucett, Shih et al., "CaloChallenge 2022") reads the files
written here. The built-in binnings are :data:`detgan.sim.geometry.BINNINGS`.

Usage::

    showers = read("dataset_1_photons_1.hdf5")            # binning inferred from V = 368
    binning = parse_binning("binning_dataset_2.xml", expected_particle="electron")
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from detgan.io.native import H5Writer, check_read_size, open_h5, root_names
from detgan.io.showers import Showers, check_real, describe_events, nonfinite_events
from detgan.sim.geometry import (
    BINNINGS,
    BinningLayer,
    CaloChallengeBinning,
    Layout,
    binning_for_voxels,
)
from detgan.utils import DetganError

__all__ = ["parse_binning", "binning_to_xml", "get_binning", "read", "count", "Writer"]

DATASETS = ("incident_energies", "showers")
_PIDS = {"photon": 22, "pion": 211, "electron": 11}


def parse_binning(
    source: str | os.PathLike, expected_particle: str | None = None, e_min: float | None = None
) -> CaloChallengeBinning:
    """Parse a binning XML file (or XML text starting with ``<``) per §1.1.3.

    Layers are taken in document order and their ``id`` must equal their position; the ``Bin``
    name must equal ``expected_particle`` when given. ``e_min`` (MeV) defaults to the built-in
    dataset's threshold when the binning equals a built-in one, else 0.
    """
    text = str(source)
    where = "binning XML" if text.lstrip().startswith("<") else f"binning file '{source}'"
    try:
        root = ET.fromstring(text) if where == "binning XML" else ET.parse(source).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DetganError(
            f"{where} cannot be read ({exc}); give a CaloChallenge binning XML"
        ) from None
    bins = root.findall("Bin")
    if root.tag != "Bins" or len(bins) != 1:
        raise DetganError(f"{where}: expected a root 'Bins' with one 'Bin' element")
    name, layers = bins[0].get("name", ""), []
    if expected_particle is not None and name != expected_particle:
        raise DetganError(f"{where} is for particle '{name}', expected '{expected_particle}'")
    for k, node in enumerate(bins[0].findall("Layer")):
        try:
            lid, n_alpha = int(node.get("id", "")), int(node.get("n_bin_alpha", ""))
            edges = tuple(float(e) for e in node.get("r_edges", "").split(","))
        except ValueError:
            raise DetganError(
                f"{where}: layer {k} has an unreadable id, r_edges or n_bin_alpha"
            ) from None
        if lid != k:
            raise DetganError(
                f"{where}: layer number {k} has id {lid}; ids must be 0, 1, 2, ... in order"
            )
        if (
            edges[0] != 0
            or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
            or n_alpha < 1
        ):
            raise DetganError(
                f"{where}: layer {k} needs increasing r_edges from 0 and n_bin_alpha >= 1"
            )
        layers.append(BinningLayer(lid, edges, n_alpha))
    pid = int(bins[0].get("pid", _PIDS.get(name, 0)))
    binning = CaloChallengeBinning(name, pid, tuple(layers))
    for known in BINNINGS.values():
        if known.layers == binning.layers and known.particle == name:
            binning = known
    if e_min is not None:
        binning = CaloChallengeBinning(name, pid, binning.layers, binning.dataset, float(e_min))
    return binning


def binning_to_xml(binning: CaloChallengeBinning) -> str:
    """The binning as CaloChallenge XML text (round-trips through :func:`parse_binning`)."""
    root = ET.Element("Bins")
    node = ET.SubElement(root, "Bin", pid=str(binning.pid), name=binning.particle)
    for layer in binning.layers:
        edges = ",".join(f"{e:g}" for e in layer.r_edges)
        ET.SubElement(
            node, "Layer", id=str(layer.id), r_edges=edges, n_bin_alpha=str(layer.n_alpha)
        )
    return ET.tostring(root, encoding="unicode")


def get_binning(
    spec: str | os.PathLike | CaloChallengeBinning | None, n_voxels: int | None = None
) -> CaloChallengeBinning:
    """A binning from a built-in name (``1-photons``, ``1-pions``, ``2``, ``3``), an XML path,
    an object, or (``spec=None``) inferred from ``n_voxels``."""
    if isinstance(spec, CaloChallengeBinning):
        return spec
    if spec is None:
        if n_voxels is None:
            raise DetganError("give a CaloChallenge binning name or file")
        return binning_for_voxels(n_voxels)
    if str(spec) in BINNINGS:
        return BINNINGS[str(spec)]
    if not Path(spec).is_file():
        raise DetganError(
            f"binning '{spec}' is neither a built-in name ({', '.join(BINNINGS)}) nor an XML file"
        )
    return parse_binning(spec)


def _layout_of(f: h5py.File, path: Any, binning: Any, n_voxels: int) -> CaloChallengeBinning:
    if binning is None and "binning_xml" in f.attrs:
        stored = f.attrs["binning_xml"]
        stored = stored.decode() if isinstance(stored, bytes) else str(stored)
        e_min = float(f.attrs.get("e_min", 0.0))
        try:
            binning = parse_binning(stored if stored.lstrip().startswith("<") else "<", e_min=e_min)
        except DetganError as exc:
            raise DetganError(
                f"file '{path}': its 'binning_xml' attribute is invalid: {exc}"
            ) from None
    try:
        binning = get_binning(binning, n_voxels)
    except DetganError as exc:
        raise DetganError(f"file '{path}': {exc}") from None
    if binning.n_cells != n_voxels:
        raise DetganError(
            f"file '{path}': dataset 'showers' has {n_voxels} voxels per event but binning "
            f"'{binning.dataset}' expects {binning.n_cells}; pass the matching binning"
        )
    return binning


def _check_layout(f: h5py.File, path: Any) -> tuple[int, list[str]]:
    """Both datasets present, real, 2-D showers, (N, 1) or (N,) energies, equal N."""
    for name in DATASETS:
        if name not in f or not isinstance(f[name], h5py.Dataset):
            have = ", ".join(root_names(f)) or "none"
            raise DetganError(
                f"file '{path}' has no dataset '{name}' (it has: {have}); a CaloChallenge file "
                "needs 'incident_energies' and 'showers'"
            )
        check_real(path, name, f[name].dtype)
    showers, energies = f["showers"], f["incident_energies"]
    if showers.ndim != 2:
        raise DetganError(
            f"file '{path}': dataset 'showers' has shape {showers.shape}, expected (N, V)"
        )
    if not (energies.ndim == 1 or (energies.ndim == 2 and energies.shape[1] == 1)):
        raise DetganError(
            f"file '{path}': dataset 'incident_energies' has shape {energies.shape}, "
            "expected (N, 1)"
        )
    if energies.shape[0] != showers.shape[0]:
        raise DetganError(
            f"file '{path}': 'incident_energies' has {energies.shape[0]} events but 'showers' has "
            f"{showers.shape[0]}; the file is inconsistent, regenerate it"
        )
    if showers.shape[0] == 0:
        raise DetganError(f"file '{path}' holds no events")
    extra = sorted(set(root_names(f)) - set(DATASETS))
    notices = [f"file '{path}': ignoring extra root objects {', '.join(extra)}"] if extra else []
    return showers.shape[0], notices


def count(path: str | os.PathLike) -> int:
    """Number of events in a CaloChallenge file (layout validated, cells not read)."""
    with open_h5(path) as f:
        return _check_layout(f, path)[0]


def read(
    path: str | os.PathLike,
    *,
    binning: Any = None,
    start: int = 0,
    stop: int | None = None,
    drop_nonfinite: bool = False,
) -> Showers:
    """Read events ``start:stop`` of a CaloChallenge file into :class:`Showers`, validated (§1.1.8).

    Non-finite events are an error unless ``drop_nonfinite`` (then counted in
    ``meta["dropped_nonfinite"]``); E_inc ≤ 0 is an error; negative voxels are counted in
    ``meta["negative_cells"]`` and kept (the threshold zeroes them).
    """
    with open_h5(path) as f:
        n, notices = _check_layout(f, path)
        layout = _layout_of(f, path, binning, f["showers"].shape[1])
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        check_read_size(f, DATASETS, start, stop)
        try:
            energy = f["incident_energies"][start:stop].reshape(-1).astype(np.float64)
            cells = f["showers"][start:stop]
        except OSError:
            raise DetganError(f"file '{path}' is corrupt or truncated; regenerate it") from None
    if cells.dtype.kind != "f":
        cells = cells.astype(np.float64)
    keep, dropped = _finite_rows(path, energy, cells, start, drop_nonfinite)
    if dropped:
        energy, cells = energy[keep], cells[keep]
    bad = np.flatnonzero(energy <= 0)
    if len(bad):
        raise DetganError(
            f"file '{path}': dataset 'incident_energies' has values <= 0 in "
            f"{describe_events(bad, start)}; incident energies must be > 0 MeV"
        )
    meta = {
        "source_format": "calochallenge",
        "path": str(path),
        "attrs": attrs,
        "notices": notices,
        "negative_cells": int((cells < 0).sum()),
        "dropped_nonfinite": dropped,
        "e_min": layout.e_min,
        "n_file_events": n,
    }
    return Showers(energy, cells, layout, {}, meta)


def _finite_rows(
    path: Any, energy: np.ndarray, cells: np.ndarray, start: int, drop: bool
) -> tuple[np.ndarray, int]:
    keep = np.ones(len(energy), dtype=bool)
    for name, array in (("incident_energies", energy), ("showers", cells)):
        bad = nonfinite_events(array)
        if len(bad) and not drop:
            raise DetganError(
                f"file '{path}': dataset '{name}' has NaN or inf in {describe_events(bad, start)}; "
                "fix the file or drop them (--drop-nonfinite)"
            )
        keep[bad] = False
    return keep, int((~keep).sum())


class Writer:
    """Stream showers into a CaloChallenge file (§1.1.9): two 2-D datasets, gzip, atomic.

    ``dtype`` is ``float32`` (default) or ``float64``; values are written unaltered after a
    finiteness check. Provenance ``attrs`` become HDF5 attributes, with the binning as XML.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_events: int,
        layout: Layout,
        attrs: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
        dtype: str = "float32",
    ) -> None:
        if layout.kind != "calochallenge":
            raise DetganError(
                f"cannot write '{layout.name}' showers as CaloChallenge: "
                "the cell layouts differ; use --to native"
            )
        if dtype not in ("float32", "float64"):
            raise DetganError(f"CaloChallenge dtype must be float32 or float64, got '{dtype}'")
        meta = {
            **(attrs or {}),
            "dataset": layout.dataset,
            "binning_xml": binning_to_xml(layout),
            "e_min": layout.e_min,
            "units": json.dumps({"incident_energies": "MeV", "showers": "MeV"}),
        }
        specs = {"incident_energies": ((1,), dtype), "showers": ((layout.n_cells,), dtype)}
        self._h5 = H5Writer(path, n_events, specs, meta, overwrite=overwrite, compression="gzip")
        self.layout, self._start = layout, 0

    def __enter__(self) -> Writer:
        self._h5.__enter__()
        return self

    def append(self, showers: Showers) -> None:
        if showers.layout.n_cells != self.layout.n_cells:
            raise DetganError("cannot write showers of a different binning into this file")
        for name, array in (("incident energies", showers.energy), ("showers", showers.cells)):
            bad = nonfinite_events(array)
            if len(bad):
                raise DetganError(f"refusing to write NaN or inf {name} in {describe_events(bad)}")
        arrays = {"incident_energies": showers.energy[:, None], "showers": showers.cells}
        self._h5.write(self._start, arrays)
        self._start += len(showers)

    def __exit__(self, *exc: Any) -> None:
        self._h5.__exit__(*exc)
