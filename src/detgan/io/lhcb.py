"""LHCb ECAL ``.npz`` archives (Chekalina et al., arXiv:1812.01319; formats spec §1.3).

Keys: ``EnergyDeposit`` (N, 30, 30) MeV with ``[n, ix, iy]`` (first axis x; (N, 900) and
(N, 30, 30, L) also read), ``ParticlePoint`` (N, 3) cm, ``ParticleMomentum`` (N, 3) GeV,
``ParticlePDG`` (N,), optional ``TotalEnergySci``/``TotalEnergyAbsorb`` (N,) and an optional
``meta`` 0-d string holding JSON provenance. Archives are read without pickle. In memory: cells
(N, 900) MeV, ``point`` in mm, ``momentum`` in MeV, incident energy |p| in MeV.

The writer streams: ``EnergyDeposit`` is written into the zip member batch by batch (memory
bounded by one batch); the small per-event arrays are kept until the end.
"""

from __future__ import annotations

import json
import os
import zipfile
from tokenize import TokenError
from typing import Any

import numpy as np

from detgan.io.native import printable
from detgan.io.showers import Showers, describe_events, nonfinite_events
from detgan.sim.geometry import GridLayer, GridLayout, Layout
from detgan.utils import DetganError, atomic_output, check_output_path

__all__ = ["read", "count", "Writer", "layout_with_pitch", "DEFAULT_PITCH_MM"]

#: Cell pitch of the published LHCb samples (2.02 cm).
DEFAULT_PITCH_MM = 20.2
REQUIRED = ("EnergyDeposit", "ParticlePoint", "ParticleMomentum")
OPTIONAL = ("ParticlePDG", "TotalEnergySci", "TotalEnergyAbsorb")
_EXTRA = {
    "ParticlePDG": "pdg",
    "TotalEnergySci": "total_energy_sci",
    "TotalEnergyAbsorb": "total_energy_absorb",
}


def layout_with_pitch(pitch_mm: float) -> GridLayout:
    """The 30 × 30 single-layer ECAL layout with the given cell pitch (mm)."""
    return GridLayout("lhcb-ecal", (GridLayer("ecal", 30, 30, pitch_mm, pitch_mm),))


def _load(path: Any) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise DetganError(f"file '{path}' not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            out = {}
            for key in archive.files:
                try:
                    out[key] = archive[key]
                except ValueError:
                    raise DetganError(
                        f"file '{path}': array '{key}' is a pickled object array, which is not "
                        "loaded for safety; re-save it with plain numeric arrays"
                    ) from None
                except MemoryError:
                    raise DetganError(
                        f"file '{path}': array '{key}' declares more data than this machine's "
                        "memory; the file is corrupt or too large"
                    ) from None
            return out
    # numpy parses .npy headers with tokenize/ast: damaged headers raise their errors too
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, SyntaxError, TokenError) as exc:
        if isinstance(exc, DetganError):
            raise
        raise DetganError(
            f"file '{path}' is not a readable .npz archive (corrupt or truncated?)"
        ) from None


def _cells(path: Any, deposit: np.ndarray) -> tuple[np.ndarray, int]:
    n = len(deposit)
    if deposit.shape[1:] == (900,):
        return deposit, 1
    if deposit.shape[1:] == (30, 30):
        return deposit.reshape(n, 900), 1
    if deposit.ndim == 4 and deposit.shape[1:3] == (30, 30):
        return deposit.sum(axis=3).reshape(n, 900), deposit.shape[3]
    raise DetganError(
        f"file '{path}': 'EnergyDeposit' has shape {deposit.shape}, expected (N, 30, 30), "
        "(N, 900) or (N, 30, 30, L)"
    )


def _check(path: Any, data: dict[str, np.ndarray]) -> int:
    for key in REQUIRED:
        if key not in data:
            raise DetganError(
                f"file '{path}' has no array '{key}' "
                f"(it has: {', '.join(sorted(map(printable, data))) or 'none'}); "
                "an LHCb file needs EnergyDeposit, ParticlePoint and ParticleMomentum"
            )
    shapes = {"ParticlePoint": ((3,), (2,)), "ParticleMomentum": ((3,),)}
    for key, allowed in shapes.items():
        if data[key].shape[1:] not in allowed or data[key].ndim < 1:
            raise DetganError(
                f"file '{path}': '{key}' has shape {data[key].shape}, expected (N, 3)"
            )
    for key in (*REQUIRED, *OPTIONAL):
        if key in data and data[key].ndim == 0:
            raise DetganError(f"file '{path}': '{key}' is a single value, expected one per event")
        if key in data and data[key].dtype.kind not in "fiu":
            raise DetganError(
                f"file '{path}': '{key}' has dtype {data[key].dtype}, expected numbers"
            )
    lengths = {k: len(data[k]) for k in (*REQUIRED, *OPTIONAL) if k in data}
    if len(set(lengths.values())) != 1:
        raise DetganError(f"file '{path}': arrays have different numbers of events {lengths}")
    if lengths["EnergyDeposit"] == 0:
        raise DetganError(f"file '{path}' holds no events")
    return lengths["EnergyDeposit"]


def count(path: str | os.PathLike) -> int:
    """Number of events in an LHCb archive."""
    return _check(path, _load(path))


def read(
    path: str | os.PathLike,
    *,
    start: int = 0,
    stop: int | None = None,
    drop_nonfinite: bool = False,
    pitch_mm: float | None = None,
) -> Showers:
    """Read an LHCb archive into :class:`Showers` (cm → mm, GeV → MeV), validated.

    The pitch is ``pitch_mm`` if given, else the one recorded in ``meta``, else 20.2 mm.
    """
    data = _load(path)
    n = _check(path, data)
    info = _meta(data.get("meta"))
    cells, sections = _cells(path, data["EnergyDeposit"][start:stop])
    point = data["ParticlePoint"][start:stop].astype(np.float64) * 10.0
    if point.shape[1] == 2:
        point = np.concatenate([point, np.zeros((len(point), 1))], axis=1)
    momentum = data["ParticleMomentum"][start:stop].astype(np.float64) * 1000.0
    conditions = {"point": point, "momentum": momentum}
    for key, name in _EXTRA.items():
        if key in data:
            conditions[name] = data[key][start:stop]
    cells = cells if cells.dtype.kind == "f" else cells.astype(np.float64)
    keep = np.ones(len(cells), dtype=bool)
    for key, array in (("EnergyDeposit", cells), *conditions.items()):
        bad = nonfinite_events(array)
        if len(bad) and not drop_nonfinite:
            raise DetganError(
                f"file '{path}': array '{key}' has NaN or inf in {describe_events(bad, start)}; "
                "fix the file or drop them (--drop-nonfinite)"
            )
        keep[bad] = False
    energy = np.linalg.norm(momentum, axis=1)
    bad = np.flatnonzero((energy <= 0) & keep)
    if len(bad):
        raise DetganError(
            f"file '{path}': 'ParticleMomentum' is zero in {describe_events(bad, start)}; "
            "every event needs a non-zero momentum"
        )
    pitch = float(pitch_mm or info.get("pitch_mm", DEFAULT_PITCH_MM))
    meta = {
        "source_format": "lhcb",
        "path": str(path),
        "attrs": info,
        "pitch_mm": pitch,
        "sections": sections,
        "negative_cells": int((cells < 0).sum()),
        "dropped_nonfinite": int((~keep).sum()),
        "n_file_events": n,
        "notices": [] if "ParticlePDG" in data else [f"file '{path}' has no ParticlePDG"],
    }
    conditions = {k: v[keep] for k, v in conditions.items()}
    return Showers(energy[keep], cells[keep], layout_with_pitch(pitch), conditions, meta)


def _meta(value: np.ndarray | None) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        out = json.loads(str(value))
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _write_npy_header(handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": shape,
    }
    np.lib.format.write_array_header_2_0(handle, header)


class Writer:
    """Stream showers into a compressed LHCb ``.npz`` (atomic; energies float32, point in cm,
    momentum in GeV, provenance as the JSON ``meta`` key)."""

    def __init__(
        self,
        path: str | os.PathLike,
        n_events: int,
        layout: Layout,
        attrs: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
    ) -> None:
        if getattr(layout, "name", None) != "lhcb-ecal":
            raise DetganError(
                f"cannot write '{getattr(layout, 'name', layout.kind)}' showers as LHCb .npz: "
                "the cell layouts differ; use --to native"
            )
        check_output_path(path, overwrite)
        self.path, self.n_events, self.overwrite = path, n_events, overwrite
        pitch = layout.layers[0].dx
        self.meta = {
            **(attrs or {}),
            "pitch_mm": pitch,
            "units": {"EnergyDeposit": "MeV", "ParticlePoint": "cm", "ParticleMomentum": "GeV"},
        }
        self._small: dict[str, list[np.ndarray]] = {}
        self._written = 0

    def __enter__(self) -> Writer:
        self._atomic = atomic_output(self.path, self.overwrite)
        tmp = self._atomic.__enter__()
        self._zip = zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        self._member = self._zip.open("EnergyDeposit.npy", "w", force_zip64=True)
        _write_npy_header(self._member, (self.n_events, 30, 30), np.float32)
        return self

    def append(self, showers: Showers) -> None:
        bad = nonfinite_events(showers.cells)
        if len(bad):
            raise DetganError(f"refusing to write NaN or inf cells in {describe_events(bad)}")
        self._member.write(np.ascontiguousarray(showers.cells, dtype=np.float32).tobytes())
        c = showers.conditions
        n = len(showers)
        small = {
            "ParticlePoint": c.get("point", np.zeros((n, 3))) / 10.0,
            "ParticleMomentum": c.get("momentum", np.zeros((n, 3))) / 1000.0,
            "ParticlePDG": c.get("pdg", np.full(n, 11)).astype(np.int32),
        }
        for key, name in (
            ("TotalEnergySci", "total_energy_sci"),
            ("TotalEnergyAbsorb", "total_energy_absorb"),
        ):
            if name in c:
                small[key] = c[name]
        for key, value in small.items():
            self._small.setdefault(key, []).append(np.asarray(value))
        self._written += n

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._member.close()
            if exc_type is None:
                if self._written != self.n_events:
                    raise RuntimeError(f"wrote {self._written} of {self.n_events} events")
                self._finish()
        except BaseException as error:
            self._zip.close()
            self._atomic.__exit__(type(error), error, None)
            raise
        self._zip.close()
        self._atomic.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        for key, parts in self._small.items():
            array = np.concatenate(parts)
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
            with self._zip.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        with self._zip.open("meta.npy", "w") as member:
            np.lib.format.write_array(member, np.array(json.dumps(self.meta, default=str)))
