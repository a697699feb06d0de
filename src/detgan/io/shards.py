"""Sharded outputs: the event range of each shard, its attributes, and merging shards into one file.

``detgan generate RUN -n N --shards K --shard-index i`` writes events
[⌊i·N/K⌋, ⌊(i+1)·N/K⌋) of the output the unsharded command would write, with the same
attributes plus the :data:`SHARD_ATTRS`. :func:`merge_shards` checks that a set of shard files
comes from one generation (all other attributes equal, datasets alike, every index 0..K−1
exactly once) and concatenates them in index order, streamed in chunks, into a file equal to
the unsharded output: HDF5 files (detgan native, CaloChallenge) and LHCb ``.npz`` files.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detgan.io.native import H5Writer, open_h5
from detgan.utils import DetganError, atomic_output, check_output_path

__all__ = ["SHARD_ATTRS", "shard_range", "shard_attrs", "merge_shards"]

#: Attributes a shard carries in addition to those of the unsharded output.
SHARD_ATTRS = ("shards", "shard_index", "shard_start", "shard_stop", "shard_total_events")

_NPZ_META = "meta"  # the LHCb writer's provenance member (a JSON string)


def shard_range(n_events: int, shards: int, index: int) -> tuple[int, int]:
    """Events [start, stop) of shard ``index`` of ``shards`` contiguous parts of ``n_events``
    (sizes differ by at most one)."""
    if shards < 1:
        raise DetganError(f"--shards must be at least 1, got {shards}")
    if not 0 <= index < shards:
        raise DetganError(f"--shard-index must lie in 0..{shards - 1}, got {index}")
    if shards > n_events:
        raise DetganError(
            f"{shards} shards of {n_events} events would leave shards empty; "
            f"use --shards {n_events} or fewer"
        )
    return n_events * index // shards, n_events * (index + 1) // shards


def shard_attrs(n_events: int, shards: int, index: int) -> dict[str, int]:
    """The :data:`SHARD_ATTRS` of shard ``index`` of ``shards`` parts of ``n_events`` (none for
    an unsharded output, ``shards`` = 1)."""
    start, stop = shard_range(n_events, shards, index)
    if shards == 1:
        return {}
    values = (shards, index, start, stop, n_events)
    return dict(zip(SHARD_ATTRS, values))


# ----------------------------------------------------------------------------------- reading
class _Shard:
    """One input: its attributes (raw and comparable), datasets {name: (shape, dtype)}."""

    def __init__(
        self,
        path: Path,
        attrs: dict[str, Any],
        raw: dict[str, Any],
        datasets: dict[str, tuple[tuple[int, ...], Any]],
        compression: str | None = None,
    ) -> None:
        self.path, self.attrs, self.raw, self.datasets = path, attrs, raw, datasets
        self.compression = compression
        missing = [k for k in SHARD_ATTRS if k not in attrs]
        if missing:
            raise DetganError(
                f"'{path}' is not a shard (no '{missing[0]}' attribute); write shards with "
                "'detgan generate … --shards K --shard-index i'"
            )
        try:
            self.k, self.index, self.start, self.stop, self.total = (
                int(attrs[k]) for k in SHARD_ATTRS
            )
        except (TypeError, ValueError):
            raise DetganError(f"'{path}': shard attributes are damaged; regenerate it") from None
        self.n = self.stop - self.start
        lengths = {shape[0] for shape, _ in datasets.values()}
        if not datasets or lengths != {self.n}:
            raise DetganError(
                f"'{path}': datasets hold {sorted(lengths)} events but shard {self.index} "
                f"should hold {self.n}; regenerate it"
            )

    def provenance(self) -> dict[str, Any]:
        """The attributes that must agree between shards of one generation."""
        return {k: v for k, v in self.attrs.items() if k not in (*SHARD_ATTRS, "n_events")}


def _comparable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_comparable(v) for v in value.tolist()] if value.ndim else value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_h5(path: Path) -> _Shard:
    with open_h5(path) as f:
        raw = {k: (f.attrs[k], f.attrs.get_id(k).dtype) for k in f.attrs}
        datasets, compression = {}, None
        for name, item in f.items():
            if not hasattr(item, "shape") or not item.shape:
                raise DetganError(f"'{path}': '{name}' is not an event-major dataset")
            datasets[name] = (item.shape, item.dtype)
            compression = compression or item.compression
    attrs = {k: _comparable(v) for k, (v, _) in raw.items()}
    return _Shard(path, attrs, raw, datasets, compression)


def _npz_members(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            for name in npz.files:
                yield name, npz[name]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DetganError(
            f"file '{path}' is not a readable .npz file ({exc}); regenerate it"
        ) from None


def _read_npz(path: Path) -> _Shard:
    if not path.is_file():
        raise DetganError(f"file '{path}' not found")
    attrs: dict[str, Any] = {}
    datasets = {}
    for name, array in _npz_members(path):
        if name == _NPZ_META:
            try:
                attrs = json.loads(str(array))
            except ValueError:
                raise DetganError(f"'{path}': its meta member is damaged; regenerate it") from None
        elif array.ndim:
            datasets[name] = (array.shape, array.dtype)
    return _Shard(path, attrs if isinstance(attrs, dict) else {}, attrs, datasets)


# ----------------------------------------------------------------------------------- checking
def _check_set(shards: list[_Shard]) -> list[_Shard]:
    """Shards of one generation, every index once; returned in index order."""
    first = shards[0]
    for s in shards[1:]:
        if (s.k, s.total) != (first.k, first.total):
            raise DetganError(
                f"'{s.path}' is shard {s.index} of {s.k} ({s.total} events), '{first.path}' of "
                f"{first.k} ({first.total} events); merge the shards of one generation"
            )
        a, b = first.provenance(), s.provenance()
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                raise DetganError(
                    f"'{s.path}' and '{first.path}' come from different generations (attribute "
                    f"'{key}' differs); merge the shards of one 'detgan generate' command"
                )
        if {k: v[1:] for k, v in s.datasets.items()} != {
            k: v[1:] for k, v in first.datasets.items()
        }:
            raise DetganError(
                f"'{s.path}' and '{first.path}' hold different datasets (names, shapes or "
                "dtypes); merge the shards of one generation"
            )
    seen: dict[int, _Shard] = {}
    for s in shards:
        if s.index in seen:
            raise DetganError(
                f"shard {s.index} is given twice ('{seen[s.index].path}', '{s.path}'); "
                "give each shard once"
            )
        seen[s.index] = s
    missing = [i for i in range(first.k) if i not in seen]
    if missing:
        names = ", ".join(map(str, missing))
        raise DetganError(
            f"shard{'s' if len(missing) > 1 else ''} {names} of {first.k} "
            f"{'are' if len(missing) > 1 else 'is'} missing; give all {first.k} shards"
        )
    ordered = [seen[i] for i in range(first.k)]
    if any(a.stop != b.start for a, b in zip(ordered, ordered[1:])) or ordered[-1].stop != (
        first.total
    ):
        raise DetganError("the shards' event ranges do not tile the events; regenerate them")
    return ordered


# ----------------------------------------------------------------------------------- merging
def merge_shards(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    chunk_events: int = 16384,
) -> Path:
    """Concatenate shard files (any order) into ``out``, equal to the unsharded output.

    HDF5 shards (native, CaloChallenge) are copied ``chunk_events`` events at a time; ``.npz``
    shards one member of one shard at a time. The merged file carries the shards' attributes
    without :data:`SHARD_ATTRS` (``n_events`` set to the total) and appears only when complete.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DetganError("give the shard files to merge")
    out = check_output_path(out, overwrite)
    if any(out.resolve() == p.resolve() for p in paths if p.exists()):
        raise DetganError(f"output '{out}' is one of the shards; write the merged file elsewhere")
    kinds = {p.suffix == ".npz" for p in paths}
    if len(kinds) > 1:
        raise DetganError("the shards mix .npz and HDF5 files; merge the shards of one generation")
    npz = kinds.pop()
    if npz != (out.suffix == ".npz"):
        raise DetganError(f"the shards are {'.npz' if npz else 'HDF5'} files; name '{out}' alike")
    shards = _check_set([_read_npz(p) if npz else _read_h5(p) for p in paths])
    if npz:
        return _merge_npz(shards, out, overwrite)
    return _merge_h5(shards, out, overwrite, chunk_events)


def _merged_attrs(first: _Shard) -> dict[str, Any]:
    return {k: v for k, v in first.raw.items() if k not in SHARD_ATTRS}


def _merge_h5(shards: list[_Shard], out: Path, overwrite: bool, chunk: int) -> Path:
    first = shards[0]
    specs = {k: (shape[1:], dtype) for k, (shape, dtype) in first.datasets.items()}
    attrs = _merged_attrs(first)
    if "n_events" in attrs:
        dtype = attrs["n_events"][1]
        attrs["n_events"] = (np.asarray(first.total, dtype=dtype), dtype)
    with H5Writer(out, first.total, specs, overwrite=overwrite, compression=first.compression) as w:
        for name, (value, dtype) in attrs.items():
            w.file.attrs.create(name, value, dtype=dtype)
        for s in shards:
            with open_h5(s.path) as f:
                for lo in range(0, s.n, chunk):
                    w.write(s.start + lo, {k: f[k][lo : lo + chunk] for k in specs})
    return out


def _merge_npz(shards: list[_Shard], out: Path, overwrite: bool) -> Path:
    first = shards[0]
    meta = _merged_attrs(first)
    if "n_events" in meta:
        meta["n_events"] = first.total
    with atomic_output(out, overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
            for name, (shape, dtype) in first.datasets.items():
                with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                    header = {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                        "fortran_order": False,
                        "shape": (first.total, *shape[1:]),
                    }
                    np.lib.format.write_array_header_2_0(member, header)
                    for s in shards:
                        member.write(np.ascontiguousarray(_npz_member(s.path, name)).tobytes())
            with z.open(f"{_NPZ_META}.npy", "w") as member:
                np.lib.format.write_array(member, np.array(json.dumps(meta, default=str)))
    return out


def _npz_member(path: Path, name: str) -> np.ndarray:
    with contextlib.closing(np.load(path, allow_pickle=False)) as npz:
        return npz[name]
