"""Commands ``bench`` (timing table of generators and simulators) and ``export`` (ONNX)."""

from __future__ import annotations

import argparse
import json
import sys

from detgan.cli._common import add_output
from detgan.utils import DetganError, available_cpus

__all__ = ["register", "run_bench_command", "run_export_command"]


def register(commands, groups) -> None:
    b = commands.add_parser(
        "bench",
        help="time every generator (and the simulators): ms per event at several batch sizes",
        description="Time generators like the CaloGAN table: ms per event at each batch size "
        "on the CPU (1 thread and all threads) and the GPU when present, median of repetitions "
        "after warm-up, the achieved GFLOP/s and its fraction of this machine's matrix-multiply "
        "rate measured in the same run, ONNX Runtime when installed, and the simulators' "
        "events per second. Without RUN directories, freshly initialised default models are "
        "timed (speed does not depend on the weights).",
    )
    b.add_argument("runs", nargs="*", metavar="RUN", help="training run directories")
    b.add_argument(
        "--batch-sizes", default="1,100,10000", help="comma-separated (default: %(default)s)"
    )
    b.add_argument(
        "--threads", default="1,all", help="CPU thread counts to measure (default: %(default)s)"
    )
    b.add_argument("--repeats", type=int, default=10, help="timed repetitions (default: 10)")
    b.add_argument(
        "--events", type=int, default=None, help="events per repetition (default: max(batch, 100))"
    )
    b.add_argument(
        "--device", default="auto", help="auto (CPU, plus GPU if present), cpu or cuda[:N]"
    )
    b.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    b.add_argument("--no-sim", action="store_true", help="skip the simulators")
    b.add_argument("--compile", action="store_true", help="also torch.compile the networks")
    b.add_argument("--json", default=None, help="write the JSON records to this file")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    b.set_defaults(func=run_bench_command)

    e = commands.add_parser(
        "export",
        help="export a trained generator with its post-processing (ONNX, dynamic batch)",
        description="Export the generator of a run, including its label preprocessing and "
        "inverse output preprocessing, as an ONNX model with inputs z (N, latent) and "
        "condition (N,) in physical units and output events (N, ...) in physical units. The "
        "export is checked against PyTorch in ONNX Runtime on 1000 events (rtol 1e-5).",
    )
    e.add_argument("run", metavar="RUN", help="training run directory")
    e.add_argument("--format", default="onnx", choices=("onnx",), help="export format")
    add_output(e, "output model file (MODEL.onnx)")
    e.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    e.set_defaults(func=run_export_command)


def _int_list(text: str, what: str, all_value: int | None = None) -> list[int]:
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "all" and all_value is not None:
            out.append(all_value)
            continue
        try:
            value = int(item)
        except ValueError:
            raise DetganError(f"--{what} expects comma-separated integers, got '{text}'") from None
        if value < 1:
            raise DetganError(f"--{what} values must be at least 1, got {value}")
        out.append(value)
    return sorted(set(out))


def _devices(spec: str) -> list[str]:
    from detgan.utils import resolve_device

    if spec == "auto":
        import torch

        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [str(resolve_device(spec))]


def run_bench_command(args: argparse.Namespace) -> int:
    from detgan import bench
    from detgan.fastpath import default_pipelines, load_pipeline
    from detgan.utils import check_output_path

    if args.json:
        check_output_path(args.json, args.overwrite)
    if args.repeats < 1:
        raise DetganError("--repeats must be at least 1")
    batches = _int_list(args.batch_sizes, "batch-sizes")
    threads = _int_list(args.threads, "threads", available_cpus())
    pipes = [load_pipeline(r) for r in args.runs] if args.runs else default_pipelines()
    result = bench.run_bench(
        pipes,
        devices=_devices(args.device),
        threads=threads,
        batches=batches,
        repeats=args.repeats,
        events=args.events,
        onnx=not args.no_onnx,
        simulators=not args.no_sim,
        compile=args.compile,
        log=lambda s: print(f"detgan bench: {s}", file=sys.stderr),
    )
    _print_result(result)
    if args.json:
        _write_json(args.json, result, args.overwrite)
    return 0


def _print_result(result: dict) -> None:
    from detgan.bench import format_calogan_table, format_table

    hw, rec = result["hardware"], result["recommendation"]
    print(
        f"# detgan bench — {hw['cpu']}, {hw['cores_available']} cores, torch {hw['torch']}"
        + (f", GPU {hw['gpu']}" if "gpu" in hw else ", no GPU")
        + f"; load average {', '.join(f'{x:.2f}' for x in hw['load_average'])}\n"
    )
    print("ms per event (median; CaloGAN-style):\n")
    print(format_calogan_table(result["rows"]) + "\n")
    print(format_table(result["rows"]) + "\n")
    print(
        f"threads: speed-up of {rec['threads_compared'][-1]} over 1 thread per batch: "
        f"{json.dumps(rec['speedup_of_most_threads'])}; recommended --threads "
        f"{rec['recommended']}"
    )


def _write_json(path: str, result: dict, overwrite: bool) -> None:
    from detgan.utils import atomic_output

    doc = {
        "hardware": result["hardware"],
        "recommendation": result["recommendation"],
        "records": [r.record() for r in result["rows"]],
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {path}", file=sys.stderr)


def run_export_command(args: argparse.Namespace) -> int:
    from detgan.export import export_run

    result = export_run(args.run, args.output, overwrite=args.overwrite, verify=not args.no_check)
    check = result.get("check")
    line = f"wrote {result['path']} ({result['name']}, latent {result['latent_dim']})"
    if check:
        line += (
            f"; ONNX Runtime = PyTorch on {check['n']} events, max relative difference "
            f"{check['max_rel']:.2g}"
        )
    print(line)
    return 0
