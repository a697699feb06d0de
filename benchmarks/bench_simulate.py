"""Benchmark: air-shower simulation speed and peak memory, end to end through the CLI.

Each row runs ``detgan simulate airshower`` in a fresh process and times the whole command
(start-up, simulation, HDF5 writing, rename), so the figure is what a user waits for. Peak
memory is the largest summed resident set size of the process tree (main process + worker
processes), sampled every 50 ms from /proc.

Usage: python benchmarks/bench_simulate.py [--events 10000 100000] [--workers 1 2]
       [--repeats 1] [--dir /tmp] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _tree_rss_mb(pid: int) -> float:
    """Summed VmRSS (MB) of ``pid`` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024


def run_once(events: int, variant: str, workers: int, directory: str) -> tuple[float, float]:
    """Wall time (s) and peak tree RSS (MB) of one simulate command."""
    out = Path(directory) / f"bench-{variant}-{events}-{workers}.h5"
    cmd = [
        sys.executable,
        "-m",
        "detgan",
        "simulate",
        "airshower",
        "--preset",
        "paper",
        "--variant",
        variant,
        "-n",
        str(events),
        "--seed",
        "1",
        "-o",
        str(out),
        "--workers",
        str(workers),
        "--overwrite",
        "--quiet",
    ]
    peak = [0.0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)

    def poll() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=poll)
    watcher.start()
    code = proc.wait()
    elapsed = time.perf_counter() - start
    watcher.join()
    size = out.stat().st_size / 1e9 if out.exists() else 0.0
    out.unlink(missing_ok=True)
    if code != 0:
        raise SystemExit(f"simulate failed with exit code {code}")
    print(
        f"  {events:>7} {variant:<5} workers={workers}: {elapsed:6.1f} s, "
        f"peak {peak[0]:6.0f} MB, file {size:.2f} GB",
        flush=True,
    )
    return elapsed, peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", default=["data", "sim"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; python {platform.python_version()}"
    )
    print(
        "timer: whole `detgan simulate airshower --preset paper` command incl. HDF5 write; "
        "float32 traces, batch 2000 events, no compression"
    )
    rows = []
    for events in args.events:
        for variant in args.variants:
            for workers in args.workers:
                runs = [run_once(events, variant, workers, args.dir) for _ in range(args.repeats)]
                wall = statistics.median(r[0] for r in runs)
                rows.append(
                    {
                        "events": events,
                        "variant": variant,
                        "workers": workers,
                        "seconds": wall,
                        "events_per_s": events / wall,
                        "ms_per_event": 1e3 * wall / events,
                        "peak_rss_mb": max(r[1] for r in runs),
                    }
                )
    print("\n| events | variant | workers | wall [s] | events/s | ms/event | peak RSS [MB] |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['events']} | {r['variant']} | {r['workers']} | {r['seconds']:.1f} | "
            f"{r['events_per_s']:.0f} | {r['ms_per_event']:.3f} | {r['peak_rss_mb']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
