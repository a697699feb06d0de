"""Many processes: torchrun launches, the process group, global-batch slices, gradient averaging.

Training under ``torchrun --nproc_per_node W -m detgan train …`` is equivalent to one process
with the same global batch B (``batch_size`` is always the global batch; W must divide it).
Every process draws the whole global batch (event indices, latent noise, the gradient-penalty
ε) from the same seeded generator, so the random streams are those of one process; it then
computes only its rows [r·B/W, (r+1)·B/W) (:func:`local_rows`, :class:`LocalRows`). After each
backward pass the gradients are averaged over the processes (:func:`average_gradients`); with
equal slices (1/W)·Σ_r ∇ mean_r(ℓ) = ∇ mean_B(ℓ), so every process applies the update one
process would, up to the order of float additions.

Why an explicit all-reduce instead of ``DistributedDataParallel``: the gradient penalty
differentiates through ``autograd.grad(create_graph=True)`` (double backward, which DDP's
reducer does not support) and the trainer freezes the critic during the generator step (DDP
would need ``find_unused_parameters``). One all-reduce of the flattened gradients per optimiser
step is exact and simple; it does not overlap communication with the backward pass, which
matters little for these small networks.

Not equivalent to one process: batch-norm statistics (per process, over B/W events, as in DDP
without SyncBatchNorm) and dropout masks (each process reseeds its global generator from
(seed, rank, iteration), :func:`seed_process`); both occur only in the paper footprint models.

Backends: ``gloo`` on CPU; with CUDA ``cpu:gloo,cuda:nccl`` (collectives pick by tensor device)
and each process binds ``cuda:LOCAL_RANK``, so ``--device cuda`` (or ``auto``) is its own GPU.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detgan.utils import DetganError

__all__ = [
    "TORCHRUN_VARIABLES",
    "launched_by_torchrun",
    "init_from_environment",
    "world_size",
    "rank",
    "is_main_process",
    "check_global_batch",
    "local_rows",
    "LocalRows",
    "EventWindow",
    "windowed",
    "average_gradients",
    "average_values",
    "broadcast_modules",
    "on_main_process",
    "seed_process",
]

#: Environment variables torchrun (and ``srun`` with a torchrun-style wrapper) sets per process.
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one of a torchrun group (``LOCAL_RANK`` is set)."""
    return "LOCAL_RANK" in (os.environ if environ is None else environ)


def init_from_environment(command: str = "train") -> bool:
    """Join the process group described by torchrun's environment; idempotent.

    Returns True when running in a process group. ``command`` is the CLI command: only
    ``train`` runs in several processes (others would all write the same output).
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    missing = [k for k in TORCHRUN_VARIABLES if k not in os.environ]
    if missing:
        raise DetganError(
            f"LOCAL_RANK is set but {', '.join(missing)} are not; start the processes with "
            "torchrun (see docs/deployment.md, 'Many processes')"
        )
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if world == 1:
        return False  # one process: nothing to coordinate
    if command != "train":
        raise DetganError(
            f"'detgan {command}' does not run in several processes; only 'detgan train' uses "
            "torchrun (split generation with --shards K --shard-index i and 'detgan merge')"
        )
    if not dist.is_available():
        raise DetganError("this PyTorch build has no torch.distributed; run one process")
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        if local < torch.cuda.device_count():
            torch.cuda.set_device(local)  # 'cuda' (no index) now means cuda:LOCAL_RANK
    dist.init_process_group(backend=backend)
    atexit.register(_leave)
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Number of processes training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's index in the group (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True for the process that writes checkpoints, history, progress and files."""
    return rank() == 0


def check_global_batch(batch_size: int) -> None:
    """Refuse a global batch that does not split into equal parts over the processes."""
    w = world_size()
    if batch_size % w:
        fit = -(-batch_size // w) * w
        raise DetganError(
            f"batch_size {batch_size} (the global batch) does not divide among {w} processes; "
            f"use a multiple of {w}, e.g. --set batch_size={fit}"
        )


def local_rows(batch_size: int) -> slice:
    """Rows [r·B/W, (r+1)·B/W) of a global batch of B events that this process computes."""
    check_global_batch(batch_size)
    part = batch_size // world_size()
    return slice(rank() * part, (rank() + 1) * part)


class LocalRows(nn.Module):
    """``module`` evaluated on rows ``rows`` of its batch only.

    ``forward(*args)`` with first argument (N, ...) → (N, ...): tensor arguments with N rows are
    sliced to ``rows``, the module's output fills those rows and the others are zeros (no
    gradient). A problem's ``sample_fake`` can thus draw the latent noise of the whole global
    batch — the random stream of one process — while this process computes only its part.
    Other attributes (``noise_dim``, …) are those of ``module``.
    """

    def __init__(self, module: nn.Module, rows: slice) -> None:
        super().__init__()
        self.module, self.rows = module, rows

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        n = args[0].shape[0]

        def part(a: Any) -> Any:
            return a[self.rows] if isinstance(a, Tensor) and a.ndim and a.shape[0] == n else a

        out = self.module(*map(part, args), **{k: part(v) for k, v in kwargs.items()})
        before = out.new_zeros((self.rows.start, *out.shape[1:]))
        after = out.new_zeros((n - self.rows.stop, *out.shape[1:]))
        return torch.cat([before, out, after])

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


class EventWindow(nn.Module):
    """``module`` evaluated only on calls whose events overlap [start, stop) of a sequence.

    Events are counted over successive calls (first argument (n, ...) each). A call overlapping
    the window runs ``module`` on all its rows, so results are those of the unsharded call
    bit for bit; any other call returns zeros of the output's shape. A sampler that draws the
    latent noise of every event in order thus reproduces events [start, stop) of its unsharded
    output while computing only the batches holding them (sharded generation).
    """

    def __init__(self, module: nn.Module, start: int, stop: int) -> None:
        super().__init__()
        self.module, self.start, self.stop = module, int(start), int(stop)
        self.seen = 0
        self._template: tuple[tuple[int, ...], torch.dtype] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        first, n = self.seen, args[0].shape[0]
        self.seen += n
        if first < self.stop and self.seen > self.start:
            out = self.module(*args, **kwargs)
            self._template = (tuple(out.shape[1:]), out.dtype)
            return out
        if self._template is None:  # learn the output's shape from one event
            probe = self.module(*(a[:1] if isinstance(a, Tensor) else a for a in args), **kwargs)
            self._template = (tuple(probe.shape[1:]), probe.dtype)
        shape, dtype = self._template
        return args[0].new_zeros((n, *shape), dtype=dtype)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def windowed(model: Any, start: int, stop: int, total: int) -> Any:
    """A sampler dataclass with a ``generator`` whose generator runs only on events
    [start, stop) of ``total`` (:class:`EventWindow`); ``model`` itself for the whole range."""
    if (start, stop) == (0, total):
        return model
    return dataclasses.replace(model, generator=EventWindow(model.generator, start, stop))


def average_gradients(parameters: Iterable[Tensor]) -> None:
    """Replace each ``.grad`` by its mean over the processes (one all-reduce per device/dtype).

    Parameters without a gradient are skipped; they are the same on every process because
    every process runs the same steps.
    """
    w = world_size()
    if w == 1:
        return
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= w
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def average_values(values: Mapping[str, float]) -> dict[str, float]:
    """The mean over the processes of each number (loss terms for the history), one all-reduce."""
    w = world_size()
    if w == 1:
        return dict(values)
    keys = list(values)  # the same order on every process: they run the same code
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: v / w for k, v in zip(keys, t.tolist())}


def broadcast_modules(modules: Iterable[nn.Module | None]) -> None:
    """Copy parameters and buffers of process 0 to all processes (identical start)."""
    if world_size() == 1:
        return
    for module in modules:
        if module is None:
            continue
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)


def on_main_process(fn: Callable[[], None]) -> None:
    """Run ``fn`` on process 0 only; the others wait for it and fail with the same message.

    For work on shared files (checking or clearing a run directory), so that no process
    races another and all stop together when process 0 refuses.
    """
    if world_size() == 1:
        fn()
        return
    message, error = None, None
    if is_main_process():
        try:
            fn()
        except DetganError as exc:
            message, error = str(exc), exc
        except Exception as exc:  # noqa: BLE001 - the others must not wait forever
            message, error = f"process 0 failed: {type(exc).__name__}: {exc}", exc
    box = [message]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise DetganError(box[0])


def seed_process(seed: int, step: int) -> None:
    """Seed this process's global torch generator from (seed, rank, iteration).

    Only dropout draws from it during training; without this every process would repeat
    process 0's masks. Seeding per iteration keeps resumed runs exact.
    """
    torch.manual_seed((int(seed) * 1_000_003 + rank() * 7_919 + int(step)) % 2**63)
