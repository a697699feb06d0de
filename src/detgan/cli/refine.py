"""Commands ``train refiner``, ``refine`` and ``study refine`` (``paper_methods.md`` §3).

torch is imported inside the handlers only, so building the parser stays light.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from detgan.cli._common import (
    add_output,
    add_runtime,
    add_training,
    configured,
    run_training,
)
from detgan.config import parse_assignments
from detgan.utils import DetganError, check_output_path, set_threads

__all__ = ["register"]

PRESETS = ("paper", "full", "quick")


def register(commands, groups) -> None:
    _register_train(groups["train"])
    _register_refine(commands)
    _register_study(groups["study"])


def _register_train(train) -> None:
    p = train.add_parser(
        "refiner",
        help="train the trace refiner sim -> data (Erdmann et al. 2018, Table 3)",
        description="Train a refiner that turns 'sim' air-shower traces into 'data'-like traces "
        "with a WGAN-GP critic. Writes RUN/checkpoint.pt, RUN/history.jsonl, RUN/config.json.",
    )
    p.add_argument("--sim", required=True, help="'sim' variant file (traces)")
    p.add_argument("--data", required=True, help="'data' variant file (traces)")
    p.add_argument(
        "--preset",
        default="quick",
        choices=PRESETS,
        help="paper: Table 3 as published (GPU); full: 2 h on 2 cores; quick: "
        "minutes (default: %(default)s)",
    )
    p.add_argument("--iterations", type=int, default=None, help="refiner iterations (override)")
    add_training(p, "self_regularisation=0.1")
    p.set_defaults(func=run_train)


def _register_refine(commands) -> None:
    p = commands.add_parser(
        "refine",
        help="refine a 'sim' file with a trained refiner",
        description="Refine every event of a 'sim' file in chunks; all datasets and labels are "
        "kept, traces replaced, footprint/triggered recomputed.",
    )
    p.add_argument("run", help="refiner run directory (from 'detgan train refiner')")
    p.add_argument("sim", help="'sim' variant file to refine")
    add_output(p, "refined HDF5 file")
    p.add_argument("--chunk-size", type=int, default=1000, help="events per chunk (default: 1000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime(p)
    p.set_defaults(func=run_refine)


def _register_study(study) -> None:
    p = study.add_parser(
        "refine",
        help="energy reconstruction with sim-, refined- and data-trained regressors",
        description="Train an AixNet-like energy regressor on 'sim', refined 'sim' and 'data', "
        "evaluate on held-out 'data'; write bias/resolution per energy bin, scatter plots, "
        "Fig. 5 and 7 and classifier AUCs to REPORT/ (summary.json, report.md, report.html).",
    )
    p.add_argument("--sim", required=True, help="'sim' variant file")
    p.add_argument("--data", required=True, help="'data' variant file")
    p.add_argument("--refiner", required=True, help="refiner run directory")
    p.add_argument(
        "--preset",
        default="quick",
        choices=PRESETS,
        help="regressor and sample sizes (default: %(default)s)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="override a study setting, e.g. --set epochs=4 (repeatable)",
    )
    add_output(p, "report folder")
    add_runtime(p)
    p.set_defaults(func=run_study)


def run_train(args: argparse.Namespace) -> int:
    from detgan.studies.refine import refine_preset, train_refiner

    setup = configured(args, refine_preset(args.preset))
    for path in (args.sim, args.data):
        if not Path(path).is_file():
            raise DetganError(
                f"file '{path}' not found; simulate it with 'detgan simulate airshower'"
            )
    inputs = (args.sim, args.data)
    return run_training(args, "refiner", setup, train_refiner, *inputs, iterations=args.iterations)


def run_refine(args: argparse.Namespace) -> int:
    from detgan.studies.refine import refine_file

    if args.chunk_size < 1:
        raise DetganError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    set_threads(args.threads)
    check_output_path(args.output, args.overwrite)
    start = time.perf_counter()
    out = refine_file(
        args.run,
        args.sim,
        args.output,
        chunk_size=args.chunk_size,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote refined events to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def run_study(args: argparse.Namespace) -> int:
    from detgan.studies.refine_study import STUDY_PRESETS, run_refine_study

    cfg = STUDY_PRESETS[args.preset].replace(**parse_assignments(args.set))
    threads = set_threads(args.threads)
    out = run_refine_study(
        args.sim,
        args.data,
        args.refiner,
        args.output,
        config=cfg,
        device=args.device,
        overwrite=args.overwrite,
    )
    summary = json.loads((Path(out) / "summary.json").read_text())
    perf = summary["performance"]
    print(
        f"mean |bias| on data: sim-trained {perf['sim_on_data']['mean_abs_bias']:.3f}, "
        f"refined-trained {perf['refined_on_data']['mean_abs_bias']:.3f}, data-trained "
        f"{perf['data_on_data']['mean_abs_bias']:.3f}; AUC sim/data "
        f"{summary['auc']['sim_vs_data']['auc']:.3f}, refined/data "
        f"{summary['auc']['refined_vs_data']['auc']:.3f}"
    )
    print(
        f"report: {Path(out) / 'report.html'} ({summary['timings']['total_s']:.0f} s on "
        f"{threads} thread(s))"
    )
    return 0
