"""Small shared helpers: user-facing errors, devices, threads, seeding and atomic file writes."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `detgan simulate` never needs it
    import torch

__all__ = [
    "DetganError",
    "resolve_device",
    "set_threads",
    "seed_everything",
    "atomic_output",
    "check_output_path",
    "available_cpus",
    "catch_interrupts",
    "was_interrupted",
]

#: Set by the SIGINT handler of :func:`catch_interrupts`. Python ignores a KeyboardInterrupt
#: raised inside a finaliser or weakref callback, so a Ctrl-C can otherwise be lost; the flag
#: makes sure an interrupted command never renames an output into place.
_INTERRUPT = {"seen": False}


def _on_sigint(signum, frame) -> None:
    _INTERRUPT["seen"] = True
    raise KeyboardInterrupt


def catch_interrupts() -> None:
    """Install the SIGINT handler that records interrupts (CLI entry point, main thread only)."""
    import signal
    import threading

    _INTERRUPT["seen"] = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _quiet_interrupts


def _quiet_interrupts(unraisable) -> None:
    """Drop the 'Exception ignored' report of a swallowed Ctrl-C; the flag already has it."""
    if unraisable.exc_type is not KeyboardInterrupt:
        sys.__unraisablehook__(unraisable)


def was_interrupted() -> bool:
    """Whether a SIGINT arrived since :func:`catch_interrupts`."""
    return _INTERRUPT["seen"]


class DetganError(Exception):
    """An error caused by the user's input; the CLI prints its message as one line.

    The message names the problem and, where there is one, the fix.
    """


def available_cpus() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:i|mps`` into a :class:`torch.device`, checking it exists."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DetganError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DetganError(
                f"device '{spec}' requested but CUDA is not available; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DetganError(
                f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA devices)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DetganError("device 'mps' requested but it is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DetganError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    return device


def set_threads(n: int | None) -> int:
    """Set torch's intra-op thread count (``None`` or 0: all available cores); return it."""
    import torch

    if n is None or n <= 0:
        n = available_cpus()
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch globally. Only the CLI and test fixtures call this."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate an output path before long work starts: refuse existing files unless asked."""
    path = Path(path)
    if path.is_dir():
        raise DetganError(f"output '{path}' is a directory; give a file name")
    if path.exists() and not overwrite:
        raise DetganError(f"output '{path}' already exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DetganError(
            f"directory '{parent}' of output '{path}' does not exist; create it first"
        )
    if not os.access(parent, os.W_OK):
        raise DetganError(f"directory '{parent}' is not writable; choose another output path")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by killed processes (``.NAME.tmp-PID``)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)) and tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    An exception (including KeyboardInterrupt) removes the temporary file, so no partial
    output ever appears under the final name. A process killed outright (SIGKILL, power
    loss) leaves only its ``.NAME.tmp-PID`` file, which the next write of ``path`` removes.
    """
    path = check_output_path(path, overwrite)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if was_interrupted():  # a Ctrl-C swallowed by a finaliser still cancels the output
            raise KeyboardInterrupt
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
