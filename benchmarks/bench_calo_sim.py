"""Speed of the parameterised calorimeter simulation (showers per second, per geometry).

Two timer scopes (formats_and_metrics.md §4):

- ``generation``: one call of ``simulate_batch`` — from the batch's seed to the showers as an
  (N, V) float32 array in MeV in host memory, noise and thresholds applied; excludes imports,
  geometry set-up (one untimed warm-up batch per row) and file writing. One process, numpy is
  single-threaded.
- ``end-to-end file``: ``simulate_to_file`` with W worker processes, including gzip HDF5 writing.

Usage::

    flock /tmp/detgan-heavy.lock python benchmarks/bench_calo_sim.py [--reps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from detgan import __version__
from detgan.sim.calorimeter import CaloSimConfig, simulate_batch, simulate_to_file
from detgan.sim.geometry import GEOMETRIES
from detgan.utils import available_cpus


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_generation(cfg: CaloSimConfig, batch: int, reps: int) -> list[float]:
    """Seconds per batch of ``batch`` showers, ``reps`` timed repetitions after a warm-up."""
    simulate_batch(cfg, 0, 0, batch)  # warm-up: geometry tables, allocator
    times = []
    for rep in range(reps):
        start = time.perf_counter()
        simulate_batch(cfg, 1, rep, batch)
        times.append(time.perf_counter() - start)
    return times


def time_file(cfg: CaloSimConfig, n: int, workers: int, reps: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        suffix = ".npz" if cfg.geo.file_format == "lhcb" else ".h5"
        for rep in range(reps):
            path = Path(tmp) / f"bench{rep}{suffix}"
            start = time.perf_counter()
            simulate_to_file(cfg, n, rep, path, workers=workers)
            times.append(time.perf_counter() - start)
            path.unlink()
    return times


def summary(name: str, scope: str, batch: int, m: int, workers: int, times: list[float]) -> dict:
    med = statistics.median(times)
    return {
        "name": name,
        "scope": scope,
        "batch_size": batch,
        "showers_per_rep": m,
        "workers": workers,
        "reps": len(times),
        "times_s": times,
        "median_s": med,
        "mean_s": statistics.mean(times),
        "std_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "min_s": min(times),
        "ms_per_shower": 1e3 * med / m,
        "showers_per_s": m / med,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geometries", nargs="*", default=list(GEOMETRIES))
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--file-events", type=int, default=8000)
    parser.add_argument("--file-reps", type=int, default=3)
    parser.add_argument("--json", help="write the records to this file")
    args = parser.parse_args(argv)
    rows = []
    b = args.batch_size
    ten_gev = CaloSimConfig(geometry="calochallenge-1-photons", energy=10_000.0, batch_size=b)
    rows.append(
        summary(
            "calochallenge-1-photons @ 10 GeV",
            "generation",
            b,
            b,
            1,
            time_generation(ten_gev, b, args.reps),
        )
    )
    for name in args.geometries:
        cfg = CaloSimConfig(geometry=name, batch_size=b)
        rows.append(
            summary(
                f"{name} (default spectrum)",
                "generation",
                b,
                b,
                1,
                time_generation(cfg, b, args.reps),
            )
        )
    for workers in (1, 2):
        times = time_file(ten_gev, args.file_events, workers, args.file_reps)
        rows.append(
            summary(
                "calochallenge-1-photons @ 10 GeV",
                "end-to-end file",
                b,
                args.file_events,
                workers,
                times,
            )
        )
    print_table(rows)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"environment": environment(), "rows": rows}, indent=1)
        )
    return 0


def environment() -> dict:
    return {
        "cpu": cpu_model(),
        "cpus_available": available_cpus(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "detgan": __version__,
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def print_table(rows: list[dict]) -> None:
    env = environment()
    print(
        f"# CPU: {env['cpu']}, {env['cpus_available']} cores available; numpy {env['numpy']}, "
        f"Python {env['python']}, detgan {env['detgan']}; load average {env['load_average']}"
    )
    print("# precision float32; numpy single-threaded per process (workers = processes)")
    print(
        "| configuration | timer scope | batch | showers/rep | workers | reps | median s "
        "| mean ± std s | min s | ms/shower | showers/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['scope']} | {r['batch_size']} | {r['showers_per_rep']} "
            f"| {r['workers']} | {r['reps']} | {r['median_s']:.3f} | {r['mean_s']:.3f} ± "
            f"{r['std_s']:.3f} | {r['min_s']:.3f} | {r['ms_per_shower']:.3f} "
            f"| {r['showers_per_s']:.0f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
