"""Generation speed of detgan's generators, refiner and simulators (script form of `detgan bench`).

Times every generator like the CaloGAN table (ms per event at batch 1, 100, 10 000; CPU at 1
thread and all threads, GPU when present; ONNX Runtime when installed) and writes the JSON
records and a Markdown file with the hardware, the load average and the command.

Usage::

    flock /tmp/detgan-heavy.lock python benchmarks/bench_generators.py [RUN ...] \\
        [--repeats 10] [--batch-sizes 1,100,10000] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from detgan.bench import format_calogan_table, format_table, run_bench
from detgan.fastpath import default_pipelines, load_pipeline
from detgan.utils import available_cpus


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch-sizes", default="1,100,10000")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    threads = sorted({1, available_cpus()})
    pipes = [load_pipeline(r) for r in args.runs] if args.runs else default_pipelines()
    result = run_bench(
        pipes,
        threads=threads,
        batches=batches,
        repeats=args.repeats,
        log=lambda s: print(s, file=sys.stderr),
    )
    hw = result["hardware"]
    text = "\n\n".join(
        [
            f"Command: `{shlex.join(['python', *sys.argv])}`",
            f"Hardware: {hw['cpu']}, {hw['cores_available']} cores, torch {hw['torch']}, "
            f"load average {hw['load_average']}",
            format_calogan_table(result["rows"]),
            format_table(result["rows"]),
            f"Thread recommendation: {json.dumps(result['recommendation'])}",
        ]
    )
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        records = [r.record() for r in result["rows"]]
        Path(args.json).write_text(json.dumps({"hardware": hw, "records": records}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
