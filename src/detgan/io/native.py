"""The native HDF5 layout: streamed atomic writing, validated reading and chunked iteration.

A native file holds event-major datasets of equal length N at the root and its provenance
(configuration, seed, package version) in root attributes. The air-shower layout is
``airshower.md`` §16; generated files use the same names for the same quantities.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from detgan import __version__
from detgan.utils import DetganError, atomic_output

__all__ = [
    "H5Writer",
    "write_arrays",
    "open_h5",
    "root_names",
    "read_attrs",
    "read_arrays",
    "iter_chunks",
    "check_arrays",
    "check_read_size",
    "n_events",
    "centre_hottest",
    "AIRSHOWER_SCHEMA",
]

#: dataset -> (trailing shape with 'n' for the array side and 't' for time bins, allowed kinds)
AIRSHOWER_SCHEMA: dict[str, tuple[tuple[str | int, ...], str]] = {
    "traces": (("n", "n", "t"), "f"),
    "triggered": (("n", "n"), "b"),
    "arrival_time": (("n", "n"), "f"),
    "footprint": (("n", "n"), "f"),
    "energy": ((), "f"),
    "log10_energy": ((), "f"),
    "xmax": ((), "f"),
    "core": ((3,), "f"),
    "axis": ((3,), "f"),
    "muon_traces": (("n", "n", "t"), "f"),
    "em_traces": (("n", "n", "t"), "f"),
}


def _attr_value(value: Any) -> Any:
    """Convert a Python value to something h5py stores as an attribute."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return np.array(value, dtype=h5py.string_dtype())
        return np.asarray(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


class H5Writer:
    """Write N events into an HDF5 file in slices, atomically.

    ``datasets`` maps a name to ``(per-event shape, dtype)``. Datasets are created with their
    final length and chunked along the event axis, so memory is bounded by the slice size.
    The file appears under its final name only when every event was written and the
    ``with`` block ended without an exception.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_events: int,
        datasets: Mapping[str, tuple[tuple[int, ...], Any]],
        attrs: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
        chunk_events: int = 256,
        compression: str | None = None,
    ) -> None:
        if n_events < 1:
            raise DetganError(f"number of events must be at least 1, got {n_events}")
        self.path = Path(path)
        self.n_events = n_events
        self.datasets = dict(datasets)
        self.attrs = dict(attrs or {})
        self.overwrite = overwrite
        self.chunk_events = max(1, min(chunk_events, n_events))
        self.compression = None if compression in (None, "none") else compression
        self._written = 0
        self._stack = contextlib.ExitStack()
        self.file: h5py.File | None = None

    def __enter__(self) -> H5Writer:
        tmp = self._stack.enter_context(atomic_output(self.path, self.overwrite))
        self.file = self._stack.enter_context(h5py.File(tmp, "w"))
        for name, (shape, dtype) in self.datasets.items():
            chunk_shape = (self.chunk_events, *shape)
            self.file.create_dataset(
                name,
                shape=(self.n_events, *shape),
                dtype=dtype,
                chunks=chunk_shape,
                compression=self.compression,
            )
        self.file.attrs["package_version"] = __version__
        for key, value in self.attrs.items():
            self.file.attrs[key] = _attr_value(value)
        return self

    def write(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write ``arrays`` (every dataset, same length) into events ``start:start+len``."""
        assert self.file is not None, "use H5Writer inside a with block"
        missing = set(self.datasets) - set(arrays)
        if missing:
            raise ValueError(f"slice lacks datasets {sorted(missing)}")
        length = len(next(iter(arrays.values())))
        for name in self.datasets:
            self.file[name][start : start + length] = arrays[name]
        self._written += length

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._written != self.n_events:
            exc = RuntimeError(f"wrote {self._written} of {self.n_events} events")
            self._stack.__exit__(type(exc), exc, None)
            raise exc
        self._stack.__exit__(exc_type, exc, tb)


def write_arrays(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write in-memory event-major arrays to a native file in one go (atomically)."""
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise DetganError(f"arrays have inconsistent lengths {sorted(lengths)}")
    specs = {k: (np.shape(v)[1:], np.asarray(v).dtype) for k, v in arrays.items()}
    with H5Writer(path, lengths.pop(), specs, attrs, overwrite=overwrite) as writer:
        writer.write(0, arrays)
    return Path(path)


def printable(name: str | bytes) -> str:
    """A stored name as one line of text for a message: bytes decoded, control characters
    (a damaged file's names can hold newlines) escaped."""
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def root_names(f: h5py.File) -> list[str]:
    """Sorted names of a file's root objects as printable text (:func:`printable`)."""
    return sorted(printable(n) for n in f.keys())


@contextlib.contextmanager
def open_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading, turning missing or corrupt files into one-line errors."""
    path = Path(path)
    if not path.exists():
        raise DetganError(f"file '{path}' not found")
    if path.is_dir():
        raise DetganError(f"'{path}' is a directory, expected an HDF5 file")
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise DetganError(
            f"file '{path}' is not a readable HDF5 file (corrupt or truncated?); regenerate it"
        ) from None
    with handle:
        try:
            yield handle
        # h5py's errors for damaged metadata (ValueError: e.g. an unreadable stored dtype)
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
            reason = str(exc).strip("'\"").splitlines()[0] if str(exc) else type(exc).__name__
            raise DetganError(
                f"file '{path}' is corrupt or truncated ({reason}); regenerate it"
            ) from None


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of a file as plain Python values (strings decoded)."""
    with open_h5(path) as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _expected_shape(
    spec: tuple[str | int, ...], attrs: Mapping[str, Any], path: Any = "input"
) -> tuple[int, ...]:
    try:
        sizes = {"n": int(attrs.get("n_side", 9)), "t": int(attrs.get("n_bins", 80))}
    except (TypeError, ValueError):
        raise DetganError(
            f"file '{path}': attribute 'n_side' or 'n_bins' is not an integer; regenerate it"
        ) from None
    return tuple(sizes[s] if isinstance(s, str) else s for s in spec)


def check_arrays(
    arrays: Mapping[str, np.ndarray],
    source: str = "input",
    *,
    nonnegative: Sequence[str] = (),
    positive: Sequence[str] = (),
) -> None:
    """Refuse non-finite values, negative (or zero) values where forbidden, unequal lengths."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise DetganError(f"{source}: datasets have inconsistent lengths {lengths}")
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DetganError(f"{source}: dataset '{name}' contains NaN or inf values")
        if name in (*nonnegative, *positive) and a.dtype.kind in "fi" and (a < 0).any():
            raise DetganError(f"{source}: dataset '{name}' contains negative values")
        if name in positive and a.dtype.kind in "fiu" and (a == 0).any():
            raise DetganError(f"{source}: dataset '{name}' contains zeros; values must be > 0")


def _validate_layout(
    f: h5py.File, names: Sequence[str], schema: Mapping[str, tuple[tuple[str | int, ...], str]]
) -> int:
    path = f.filename
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    lengths = set()
    for name in names:
        if name not in f:
            have = ", ".join(root_names(f)) or "none"
            raise DetganError(f"file '{path}' has no dataset '{name}' (it has: {have})")
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            raise DetganError(f"file '{path}': '{name}' is a group, expected a dataset")
        if name in schema:
            spec, kinds = schema[name]
            want = _expected_shape(spec, attrs, path)
            if ds.ndim == 0 or tuple(ds.shape[1:]) != want:
                raise DetganError(
                    f"file '{path}': dataset '{name}' has shape {ds.shape}, expected (N, "
                    f"{', '.join(map(str, want))})".replace(", )", ")")
                )
            if ds.dtype.kind not in kinds:
                raise DetganError(f"file '{path}': dataset '{name}' has dtype {ds.dtype}")
        lengths.add(ds.shape[0] if ds.ndim else -1)
    if len(lengths) > 1:
        raise DetganError(f"file '{path}': datasets {list(names)} have different lengths")
    n = lengths.pop() if lengths else 0
    if n <= 0:
        raise DetganError(f"file '{path}' holds no events")
    return n


def read_arrays(
    path: str | os.PathLike,
    names: Sequence[str] | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    schema: Mapping[str, tuple[tuple[str | int, ...], str]] = AIRSHOWER_SCHEMA,
) -> dict[str, np.ndarray]:
    """Read (a slice of) the named datasets, validating layout, shapes, dtypes and finiteness."""
    with open_h5(path) as f:
        names = (
            list(names) if names is not None else [k for k in f if isinstance(f[k], h5py.Dataset)]
        )
        n = _validate_layout(f, names, schema)
        stop = n if stop is None else min(stop, n)
        check_read_size(f, names, start, stop)
        try:
            out = {name: f[name][start:stop] for name in names}
        except OSError:
            raise DetganError(f"file '{path}' is corrupt or truncated; regenerate it") from None
    check_arrays(out, f"file '{path}'", positive=("energy",))
    return out


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2**62


def check_read_size(
    f: h5py.File, names: Sequence[str], start: int = 0, stop: int | None = None
) -> None:
    """Refuse to read events ``start:stop`` of ``names`` when they exceed this machine's memory.

    A corrupt or crafted file can declare petabytes; this names the problem instead of failing
    with an allocation error (or, worse, swapping).
    """
    need, rows = 0, 0
    for name in names:
        ds = f[name]
        if isinstance(ds, h5py.Dataset) and ds.ndim:
            rows = len(range(*slice(start, stop).indices(ds.shape[0])))
            need += rows * int(np.prod(ds.shape[1:], dtype=np.float64)) * ds.dtype.itemsize
    memory = _memory_bytes()
    if need > memory:
        raise DetganError(
            f"file '{f.filename}' declares {rows} events needing {need / 2**30:.3g} GiB, more "
            f"than this machine's {memory / 2**30:.3g} GiB; the file is corrupt or too large"
        )


def iter_chunks(
    path: str | os.PathLike,
    names: Sequence[str],
    chunk_size: int = 2000,
    *,
    schema: Mapping[str, tuple[tuple[str | int, ...], str]] = AIRSHOWER_SCHEMA,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield ``(start, arrays)`` for consecutive chunks of the named datasets, validated."""
    with open_h5(path) as f:
        n = _validate_layout(f, names, schema)
    for start in range(0, n, chunk_size):
        yield start, read_arrays(path, names, start=start, stop=start + chunk_size, schema=schema)


def n_events(path: str | os.PathLike, name: str) -> int:
    """Number of events in dataset ``name`` of a file (validated)."""
    with open_h5(path) as f:
        return _validate_layout(f, [name], {})


def centre_hottest(footprint: np.ndarray, *per_station: np.ndarray) -> tuple[np.ndarray, ...]:
    """Shift each event so that its hottest station sits at the centre (airshower.md §17).

    ``footprint`` (N, n, n) and any other per-station arrays (N, n, n, ...) of the same events
    are translated in index space by (c − i*, c − j*), c = (n − 1)/2; positions shifted in
    from outside are 0, nothing wraps around. Ties go to the first station in row-major order.
    A loading option only: files are never modified. Returns the shifted arrays in order.
    """
    n_ev, n = footprint.shape[0], footprint.shape[1]
    hottest = footprint.reshape(n_ev, -1).argmax(axis=1)
    di = (n - 1) // 2 - hottest // n
    dj = (n - 1) // 2 - hottest % n
    grid = np.arange(n)
    src_i = grid[None, :, None] - di[:, None, None]  # (N, n, 1)
    src_j = grid[None, None, :] - dj[:, None, None]  # (N, 1, n)
    inside = (src_i >= 0) & (src_i < n) & (src_j >= 0) & (src_j < n)
    events = np.arange(n_ev)[:, None, None]
    out = []
    for a in (footprint, *per_station):
        shifted = a[events, np.clip(src_i, 0, n - 1), np.clip(src_j, 0, n - 1)]
        mask = inside.reshape(inside.shape + (1,) * (a.ndim - 3))
        out.append(np.where(mask, shifted, np.zeros((), a.dtype)))
    return tuple(out)
