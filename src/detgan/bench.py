"""Timing library: matmul-rate probe, FLOP counting, warm-up + median timing, CaloGAN-style tables.

Follows ``formats_and_metrics.md`` §4: ms per event (batch time / batch) at batch 1, 100, 10⁴;
the timer runs from the conditions in host memory to the events as a host array in physical
units (device transfers, noise, network, inverse preprocessing included); ≥ 1 untimed warm-up
batch (reported as the cold time); ≥ 10 repetitions of M = max(batch, 100) events; median,
mean, standard deviation, minimum. Next to every row the achieved GFLOP/s is divided by this
machine's dense matrix-multiply rate measured just before the row at the same thread count, so
the ratio survives other processes sharing the cores (absolute times do not).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from detgan import __version__
from detgan.utils import DetganError, available_cpus

__all__ = [
    "Timing",
    "BenchRow",
    "matmul_rate",
    "count_flops",
    "time_batches",
    "bench_pipeline",
    "bench_onnx",
    "bench_simulators",
    "hardware_info",
    "format_table",
    "format_calogan_table",
    "thread_recommendation",
    "run_bench",
]

DEFAULT_BATCHES = (1, 100, 10_000)


@dataclasses.dataclass
class Timing:
    """Per-repetition wall times (s) for ``events`` events in batches of ``batch``."""

    batch: int
    events: int
    times: list[float]
    cold: float

    @property
    def ms_per_event(self) -> float:
        """Median time per event in ms."""
        return 1e3 * statistics.median(self.times) / self.events

    def summary(self) -> dict[str, float]:
        per = [1e3 * t / self.events for t in self.times]
        return {
            "median_ms": statistics.median(per),
            "mean_ms": statistics.fmean(per),
            "std_ms": statistics.stdev(per) if len(per) > 1 else 0.0,
            "min_ms": min(per),
            "cold_ms_per_event": 1e3 * self.cold / self.batch,
            "events_per_s": 1e3 / statistics.median(per),
        }


@dataclasses.dataclass
class BenchRow:
    """One configuration (model, device, backend, precision, threads, batch) and its result."""

    name: str
    device: str
    backend: str
    precision: str
    threads: int
    batch: int
    status: str = "ok"
    timing: Timing | None = None
    flops_per_event: float = 0.0
    matmul_gflops: float = 0.0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def gflops(self) -> float:
        if self.timing is None or self.flops_per_event == 0:
            return float("nan")
        return self.flops_per_event / (self.timing.ms_per_event * 1e-3) / 1e9

    @property
    def fraction(self) -> float:
        return self.gflops / self.matmul_gflops if self.matmul_gflops > 0 else float("nan")

    def record(self) -> dict[str, Any]:
        """The JSON record of formats_and_metrics.md §4.11."""
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "name",
                "device",
                "backend",
                "precision",
                "threads",
                "batch",
                "status",
                "flops_per_event",
                "matmul_gflops",
                "options",
            )
        }
        out["timer_scope"] = "generation"
        if self.timing is not None:
            out.update(
                events=self.timing.events,
                repetitions=len(self.timing.times),
                times_s=self.timing.times,
                **self.timing.summary(),
                gflops=self.gflops,
                fraction_of_matmul=self.fraction,
            )
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(
    device: torch.device | str = "cpu",
    n: int = 1024,
    repeats: int = 10,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Dense n×n matrix-multiply rate in GFLOP/s (2n³ per product), median of ``repeats``
    after 3 warm-up products, at the current thread count."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 3):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def count_flops(fn: Callable[..., Any], *args: Any) -> int:
    """Floating-point operations of one call ``fn(*args)`` (matmuls and convolutions,
    multiply–add = 2), counted by :class:`torch.utils.flop_counter.FlopCounterMode`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn(*args)
    return int(counter.get_total_flops())


def time_batches(
    run: Callable[[int], Any],
    batch: int,
    events: int | None = None,
    repeats: int = 10,
    warmup: int = 1,
) -> Timing:
    """Time ``run(batch)`` (which must return host data, so the device has finished).

    Each repetition generates M = ``events`` (default max(batch, 100)) events in batches of
    ``batch`` (the last batch may be smaller); ``warmup`` untimed batches come first, the
    first one's time is kept as the cold time.
    """
    if batch < 1 or repeats < 1:
        raise DetganError("batch size and repetitions must be at least 1")
    events = max(batch, 100) if events is None else events
    sizes = [min(batch, events - s) for s in range(0, events, batch)]
    start = time.perf_counter()
    run(batch)
    cold = time.perf_counter() - start
    for _ in range(warmup - 1):
        run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for size in sizes:
            run(size)
        times.append(time.perf_counter() - start)
    return Timing(batch, events, times, cold)


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


# ----------------------------------------------------------------------------- pipelines
def _torch_runner(
    pipe: nn.Module,
    device: torch.device,
    precision_name: str,
    conditions: torch.Tensor,
    cuda_graphs: bool,
) -> Callable[[int], np.ndarray]:
    """run(n): conditions (host) → device → noise + pipeline → host float32 array."""
    from detgan.fastpath import CudaGraphPipeline, precision

    graphs: dict[int, CudaGraphPipeline] = {}
    latent = pipe.latent_dim

    def run(n: int) -> np.ndarray:
        c = conditions[:n].to(device, non_blocking=True)
        with torch.inference_mode():
            z = torch.randn(n, latent, device=device)
            if cuda_graphs:
                if n not in graphs:
                    graphs[n] = CudaGraphPipeline(pipe, n, precision_name)
                x = graphs[n](z, c)
            else:
                with precision(precision_name, device):
                    x = pipe(z, c)
        return x.float().cpu().numpy()

    return run


def _row_timing(
    row: BenchRow, run: Callable[[int], Any], repeats: int, events: int | None
) -> BenchRow:
    try:
        row.timing = time_batches(run, row.batch, events, repeats)
    except (RuntimeError, MemoryError) as exc:
        if not _oom(exc):
            raise
        row.status = "out of memory"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def bench_pipeline(
    pipe: nn.Module,
    *,
    device: str | torch.device = "cpu",
    threads: Sequence[int] = (1,),
    batches: Sequence[int] = DEFAULT_BATCHES,
    precisions: Sequence[str] = ("float32",),
    repeats: int = 10,
    events: int | None = None,
    fast: bool = True,
    compile: bool = False,
    cuda_graphs_below: int = 0,
    seed: int = 0,
) -> list[BenchRow]:
    """Time a :class:`~detgan.fastpath.GeneratorPipeline` for every thread count × precision
    × batch. ``fast`` applies :func:`detgan.fastpath.optimise`; CUDA graphs are used for
    batches ≤ ``cuda_graphs_below`` on a GPU. FLOPs are those of the unoptimised model
    (useful work), counted once per event."""
    from detgan.fastpath import optimise

    device = torch.device(device)
    conditions = pipe.sample_conditions(
        max(max(batches), events or 0, 100), torch.Generator().manual_seed(seed)
    )
    probe = (torch.randn(64, pipe.latent_dim), conditions[:64])
    flops = count_flops(pipe.eval(), *probe) / 64
    rows = []
    for t in threads:
        torch.set_num_threads(int(t))
        model = optimise(pipe, device, compile=compile) if fast else pipe.eval().to(device)
        for prec in precisions:
            opts = {"fast": fast, "compile": compile, **_precision_check(pipe, model, prec, device)}
            for b in batches:
                cap = pipe.info.get("max_batch_cpu") if device.type == "cpu" else None
                if cap is not None and b > cap:
                    rows.append(
                        BenchRow(
                            pipe.name,
                            device.type,
                            "torch",
                            prec,
                            torch.get_num_threads(),
                            b,
                            status="skipped (CPU time)",
                        )
                    )
                    continue
                graphs = device.type == "cuda" and b <= cuda_graphs_below
                run = _torch_runner(model, device, prec, conditions, graphs)
                row = BenchRow(
                    pipe.name,
                    device.type,
                    "torch",
                    prec,
                    torch.get_num_threads(),
                    b,
                    flops_per_event=flops,
                    matmul_gflops=matmul_rate(device),
                    options={**opts, "cuda_graphs": graphs},
                )
                rows.append(_row_timing(row, run, repeats, events))
    pipe.to("cpu")
    return rows


def _precision_check(
    ref: nn.Module, model: nn.Module, prec: str, device: torch.device
) -> dict[str, Any]:
    """Accuracy of the fast model at ``prec`` against the float32 reference (1000 events)."""
    from detgan.fastpath import accuracy_check

    n = int(getattr(ref, "info", {}).get("check_events", 1000))
    check = accuracy_check(ref, model, prec, n=n, device=device)
    model.to(device)
    return {"accuracy_vs_float32": check}


def bench_onnx(
    pipe: nn.Module,
    *,
    threads: Sequence[int] = (1,),
    batches: Sequence[int] = DEFAULT_BATCHES,
    repeats: int = 10,
    events: int | None = None,
    seed: int = 0,
) -> list[BenchRow]:
    """Time the ONNX export of ``pipe`` in ONNX Runtime (CPU execution provider)."""
    import tempfile

    import onnxruntime as ort

    from detgan.export import export_onnx

    conditions = pipe.sample_conditions(
        max(max(batches), events or 0, 100), torch.Generator().manual_seed(seed)
    ).numpy()
    flops = (
        count_flops(
            pipe.eval(), torch.randn(64, pipe.latent_dim), torch.from_numpy(conditions[:64])
        )
        / 64
    )
    rng = np.random.default_rng(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(pipe, os.path.join(tmp, "model.onnx"))
        for t in threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = int(t), 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

            def run(n: int, sess=sess) -> np.ndarray:
                z = rng.standard_normal((n, pipe.latent_dim), dtype=np.float32)
                return sess.run(None, {"z": z, "condition": conditions[:n]})[0]

            torch.set_num_threads(int(t))
            for b in batches:
                row = BenchRow(
                    pipe.name,
                    "cpu",
                    f"onnxruntime {ort.__version__}",
                    "float32",
                    int(t),
                    b,
                    flops_per_event=flops,
                    matmul_gflops=matmul_rate(),
                )
                rows.append(_row_timing(row, run, repeats, events))
    return rows


# ---------------------------------------------------------------------------- simulators
def bench_simulators(n: int = 200, repeats: int = 3, seed: int = 0) -> list[BenchRow]:
    """Events per second of the reference simulators (air shower, calorimeter), n events per
    repetition after one untimed warm-up call; single process (numpy)."""
    from detgan.sim import airshower, calorimeter

    targets = {
        "sim-airshower": lambda k: airshower.simulate(airshower.make_config(), k, seed),
        "sim-calorimeter": lambda k: calorimeter.simulate(calorimeter.CaloSimConfig(), k, seed),
    }
    rows = []
    for name, fn in targets.items():
        row = BenchRow(name, "cpu", "numpy", "float64/float32", 1, n)
        rows.append(_row_timing(row, fn, repeats, n))
    return rows


# ------------------------------------------------------------------------- report pieces
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware_info() -> dict[str, Any]:
    """CPU, cores, memory, GPU, framework versions and the load average (§4.9)."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores_available": available_cpus(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detgan": __version__,
        "numpy": np.__version__,
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
    }
    try:
        info["memory_gib"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _fmt_ms(row: BenchRow) -> str:
    if row.status != "ok" or row.timing is None:
        return row.status
    ms = row.timing.ms_per_event
    return f"{ms:.3g}" if ms >= 0.001 else f"{ms:.2e}"


def _key(row: BenchRow) -> tuple:
    return (row.name, row.device, row.backend, row.precision, row.threads)


def format_calogan_table(rows: Sequence[BenchRow]) -> str:
    """Markdown table like CaloGAN's: one line per (model, device, backend, precision,
    threads), ms per event at each batch size."""
    batches = sorted({r.batch for r in rows if not r.name.startswith("sim-")})
    lines = [
        "| model | device | backend | precision | threads | "
        + " | ".join(f"batch {b}" for b in batches)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(batches),
    ]
    groups: dict[tuple, dict[int, BenchRow]] = {}
    for r in rows:
        if not r.name.startswith("sim-"):
            groups.setdefault(_key(r), {})[r.batch] = r
    for key, by_batch in groups.items():
        cells = [_fmt_ms(by_batch[b]) if b in by_batch else "–" for b in batches]
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(rows: Sequence[BenchRow]) -> str:
    """Markdown table with every row: ms/event (median ± std), events/s, cold ms, GFLOP/s,
    the matmul rate measured before the row and the fraction of it."""
    lines = [
        "| model | device | backend | precision | threads | batch | ms/event (median) "
        "| ± std | events/s | cold ms/event | GFLOP/s | matmul GFLOP/s | fraction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.timing is None:
            lines.append(
                "| " + " | ".join(str(k) for k in _key(r)) + f" | {r.batch} | "
                f"{r.status} |" + " – |" * 6
            )
            continue
        s = r.timing.summary()
        flops = (
            f"{r.gflops:.1f} | {r.matmul_gflops:.1f} | {100 * r.fraction:.0f} %"
            if r.flops_per_event
            else "– | – | –"
        )
        lines.append(
            "| " + " | ".join(str(k) for k in _key(r)) + f" | {r.batch} | "
            f"{_fmt_ms(r)} | {s['std_ms']:.2g} | {s['events_per_s']:.4g} | "
            f"{s['cold_ms_per_event']:.3g} | {flops} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the suite
def thread_recommendation(rows: Sequence[BenchRow]) -> dict[str, Any]:
    """Compare 1 thread with the most threads measured (torch CPU rows): per model and batch
    the speed-up t(1)/t(N); recommend N only where it is faster at every batch size."""
    cpu = [r for r in rows if r.device == "cpu" and r.backend == "torch" and r.timing]
    most = max((r.threads for r in cpu), default=1)
    speedups: dict[str, dict[int, float]] = {}
    for r in cpu:
        if r.threads != 1 or most == 1:
            continue
        other = [
            o
            for o in cpu
            if _key(o)[:4] == _key(r)[:4] and o.threads == most and o.batch == r.batch
        ]
        if other:
            ratio = r.timing.ms_per_event / other[0].timing.ms_per_event
            speedups.setdefault(r.name, {})[r.batch] = round(ratio, 3)
    faster = all(v > 1.05 for by in speedups.values() for v in by.values())
    return {
        "threads_compared": [1, most],
        "speedup_of_most_threads": speedups,
        "recommended": most if speedups and faster else 1,
    }


def run_bench(
    pipelines: Sequence[nn.Module],
    *,
    devices: Sequence[str] = ("cpu",),
    threads: Sequence[int] = (1,),
    batches: Sequence[int] = DEFAULT_BATCHES,
    repeats: int = 10,
    events: int | None = None,
    onnx: bool = True,
    simulators: bool = True,
    compile: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """The whole benchmark: every pipeline on every device (CPU at each thread count; GPU in
    float32, TF32 and bf16 with CUDA graphs for batches ≤ 128), ONNX Runtime on the CPU when
    installed, and the simulators. Returns {hardware, rows, recommendation}."""
    rows: list[BenchRow] = []
    for pipe in pipelines:
        for dev in devices:
            log(f"timing {pipe.name} on {dev}")
            gpu = dev.startswith("cuda")
            rows += bench_pipeline(
                pipe,
                device=dev,
                threads=(torch.get_num_threads(),) if gpu else threads,
                batches=batches,
                precisions=("float32", "tf32", "bf16") if gpu else ("float32",),
                repeats=repeats,
                events=events,
                compile=compile,
                cuda_graphs_below=128 if gpu else 0,
            )
        if onnx and _has_onnxruntime() and pipe.latent_dim > 0:
            log(f"timing {pipe.name} in ONNX Runtime")
            rows += bench_onnx(
                pipe, threads=threads, batches=batches, repeats=repeats, events=events
            )
    if simulators:
        log("timing the simulators")
        rows += bench_simulators()
    hardware = hardware_info()
    return {"hardware": hardware, "rows": rows, "recommendation": thread_recommendation(rows)}


def _has_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
