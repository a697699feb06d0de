"""Commands ``train footprint``, ``generate`` and ``study footprint`` (paper_methods.md §2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detgan.cli._common import (
    add_output,
    add_runtime,
    add_seed,
    add_training,
    configured,
    run_training,
    runtime,
)
from detgan.utils import DetganError, seed_everything

__all__ = ["register"]

PRESET_NAMES = ("paper-journal", "paper-arxiv", "quick", "full")


def register(commands, groups) -> None:
    p = groups["train"].add_parser(
        "footprint",
        help="energy-conditioned WGAN for 9x9 air-shower footprints",
        description="Train the footprint WGAN-GP with energy constrainer (Erdmann et al. 2018, "
        "arXiv:1802.03325) on a simulation file. Writes RUN/checkpoint.pt, history.jsonl and "
        "config.json; --resume continues a stopped run exactly.",
    )
    p.add_argument(
        "--preset",
        default="quick",
        choices=PRESET_NAMES,
        help="hyper-parameters: the paper's two columns or our CPU-sized design "
        "(default: %(default)s)",
    )
    p.add_argument("--data", required=True, help="training file with 'footprint' and 'energy'")
    add_training(p, "iterations=2000")
    p.set_defaults(func=run_train)

    p = commands.add_parser(
        "generate",
        help="sample footprints from a trained run",
        description="Write N generated events ('footprint' (N,9,9), 'energy' (N,) in EeV) in the "
        "layout of the simulation files.",
    )
    p.add_argument("run", help="training run directory")
    p.add_argument(
        "-n",
        "--events",
        type=int,
        default=None,
        help="number of events (default with an energy file: all its energies)",
    )
    p.add_argument(
        "--energy",
        required=True,
        help="FILE.h5 (its energies), uniform:LOW,HIGH or one VALUE, in EeV",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        metavar="K",
        help="split the N events into K contiguous parts and write only part --shard-index; "
        "'detgan merge' joins the K files into the unsharded output (default: %(default)s)",
    )
    p.add_argument(
        "--shard-index",
        type=int,
        default=None,
        metavar="I",
        help="which part to write, 0..K-1 (with --shards)",
    )
    add_seed(p)
    add_output(p, "output HDF5 file")
    add_runtime(p)
    p.set_defaults(func=run_generate)

    p = groups["study"].add_parser(
        "footprint",
        help="Figs. 2-4 and generated-vs-reference comparisons for a footprint run",
        description="Evaluate a footprint run against held-out simulated events; writes "
        "report.md, report.json and figures.",
    )
    p.add_argument("run", help="training run directory")
    p.add_argument(
        "--reference", required=True, help="held-out simulation file (not the training file)"
    )
    add_output(p, "report directory")
    p.add_argument(
        "--events", type=int, default=20000, help="reference events used (default: %(default)s)"
    )
    p.add_argument(
        "--no-classifier", action="store_true", help="skip the classifier two-sample test"
    )
    add_seed(p)
    add_runtime(p)
    p.set_defaults(func=run_study)


def run_train(args: argparse.Namespace) -> int:
    from detgan.studies.footprint import footprint_preset, train_footprint

    setup = configured(args, footprint_preset(args.preset))
    return run_training(args, "footprint", setup, train_footprint, args.data)


def run_generate(args: argparse.Namespace) -> int:
    """``detgan generate RUN``: footprint runs here, calorimeter runs via detgan.studies.calo;
    with ``--shards K --shard-index I`` one part of the output (detgan.io.shards)."""
    from detgan.studies.calo import generate_calo, is_calo_run
    from detgan.studies.footprint import generate

    sample = generate_calo if is_calo_run(args.run) else generate
    if args.events is not None and args.events < 1:
        raise DetganError(f"-n must be at least 1, got {args.events}")
    if args.shards != 1 and args.shard_index is None:
        raise DetganError(f"--shards {args.shards} needs --shard-index I (0..{args.shards - 1})")
    device = runtime(args)
    seed_everything(args.seed)
    shard = (args.shard_index or 0, args.shards)
    out = sample(
        args.run,
        args.events,
        args.energy,
        args.seed,
        args.output,
        device=device,
        overwrite=args.overwrite,
        shard=shard,
    )
    print(f"wrote '{out}'")
    return 0


def run_study(args: argparse.Namespace) -> int:
    from detgan.studies.footprint import run_footprint_study

    device = runtime(args)
    if Path(args.reference).resolve() == Path(args.run).resolve():
        raise DetganError("--reference must be a simulation file, not the run directory")
    seed_everything(args.seed)
    result = run_footprint_study(
        args.run,
        args.reference,
        args.output,
        n_events=args.events,
        seed=args.seed,
        device=device,
        overwrite=args.overwrite,
        classifier=not args.no_classifier,
    )
    summary = {
        "correlation": result["constrainer"]["correlation"],
        "max_total_decile_deviation": result["max_total_decile_deviation"],
    }
    if "classifier" in result:
        summary["auc"] = result["classifier"]["auc"]
    print(json.dumps(summary))
    print(f"wrote report to '{args.output}/report.md'")
    return 0
