"""Safe checkpoint files: a SHA-256 content hash, durable atomic writes, weights-only loading.

A checkpoint is a dict of tensors, dicts, lists, strings, numbers, booleans and ``None``
(``torch.save`` format). :func:`save_checkpoint` adds the SHA-256 of a canonical serialisation
of that tree under :data:`HASH_KEY`, writes to a temporary name, flushes it to disk
(``fsync``) and renames it, so a reader sees either the previous complete checkpoint or the
new one. :func:`load_checkpoint_safely` unpickles with ``weights_only=True`` — a pickle that
names any other global (code) is refused before anything runs — and recomputes the hash, so
a modified or damaged file is refused too.

The hash is over values, not bytes: dict entries in sorted key order, each value tagged with
its kind and length; tensors contribute dtype, shape and raw bytes. Lists and tuples hash
alike (the unpickler may turn one into the other).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from detgan.utils import DetganError, atomic_output

__all__ = ["HASH_KEY", "content_hash", "save_checkpoint", "load_checkpoint_safely"]

#: Top-level key holding the hex SHA-256 of the rest of the checkpoint.
HASH_KEY = "content_sha256"


def _put(h: Any, tag: bytes, payload: bytes) -> None:
    h.update(tag + struct.pack("<Q", len(payload)) + payload)


def _feed(h: Any, value: Any) -> None:
    """Feed one value of the checkpoint tree into the hash, tagged and length-prefixed."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        _put(h, b"T", f"{t.dtype}|{tuple(value.shape)}".encode())
        _put(h, b"t", t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: (type(k).__name__, str(k)))
        _put(h, b"D", str(len(keys)).encode())
        for key in keys:
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        _put(h, b"L", str(len(value)).encode())
        for item in value:
            _feed(h, item)
    elif value is None or isinstance(value, bool):
        _put(h, b"B", repr(value).encode())
    elif isinstance(value, int):
        _put(h, b"I", str(value).encode())
    elif isinstance(value, float):
        _put(h, b"F", value.hex().encode())
    elif isinstance(value, str):
        _put(h, b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        _put(h, b"Y", value)
    elif isinstance(value, (torch.dtype, torch.device)):
        _put(h, b"O", str(value).encode())
    else:
        raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def content_hash(state: Mapping[str, Any]) -> str:
    """Hex SHA-256 of ``state`` (without its :data:`HASH_KEY` entry), canonically serialised."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != HASH_KEY})
    return h.hexdigest()


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(
    state: Mapping[str, Any], path: str | os.PathLike, *, overwrite: bool = True
) -> Path:
    """Write ``state`` plus its content hash to ``path`` atomically and durably; return the path.

    A crash at any moment leaves either the previous file or the new one under ``path``; a full
    disk raises ``OSError`` (ENOSPC) and leaves the previous file untouched.
    """
    path = Path(path)
    payload = {**state, HASH_KEY: content_hash(state)}
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    _fsync_directory(path.parent)
    return path


def _unsafe_message(path: Path, exc: Exception) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f"a reference to '{found.group(1)}'" if found else "objects other than tensors"
    return (
        f"checkpoint '{path}' is not a safe detgan checkpoint: it holds {what}, which could run "
        "code, so it was not loaded; use a checkpoint written by detgan"
    )


def _unpickle(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise DetganError(_unsafe_message(path, exc)) from None
        raise DetganError(f"checkpoint '{path}' cannot be read (corrupt or truncated?)") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means a damaged file
        raise DetganError(
            f"checkpoint '{path}' cannot be read ({type(exc).__name__}: corrupt or truncated?)"
        ) from None


def load_checkpoint_safely(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True`` and verify its content hash.

    Returns the state without the hash entry. Raises :class:`DetganError` with one line for a
    file that is not a checkpoint, holds code (a crafted pickle), lacks the hash or fails it.
    """
    path = Path(path)
    state = _unpickle(path, map_location)
    if not isinstance(state, dict):
        raise DetganError(f"checkpoint '{path}' is not a detgan checkpoint (no state dict)")
    stored = state.pop(HASH_KEY, None)
    if not isinstance(stored, str):
        raise DetganError(
            f"checkpoint '{path}' carries no content hash, so it was not written by detgan's "
            "save_checkpoint and is not trusted"
        )
    if content_hash(state) != stored:
        raise DetganError(
            f"checkpoint '{path}' fails its content check (SHA-256 mismatch): it was modified "
            "or damaged after writing; use another copy or retrain"
        )
    return state
