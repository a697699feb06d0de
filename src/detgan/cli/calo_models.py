"""Commands ``train calo`` and ``study calo`` (paper_methods.md §4, §5); ``generate`` for
calorimeter runs is reached through the ``generate`` command, which dispatches here."""

from __future__ import annotations

import argparse
import json
import sys

from detgan.cli._common import (
    add_output,
    add_overrides,
    add_runtime,
    add_seed,
    add_training,
    configured,
    read_overrides,
    run_training,
    runtime,
)
from detgan.utils import DetganError, seed_everything

__all__ = ["register", "run_train", "run_study", "run_params"]

MODELS = ("dense", "lhcb-conv", "calochallenge")
PRESETS = ("paper", "full", "quick")


def register(commands, groups) -> None:
    p = groups["train"].add_parser(
        "calo",
        help="calorimeter WGANs: dense [Klein], LHCb conv [arXiv:1812.01319], CaloChallenge",
        description="Train a calorimeter WGAN-GP on a showers file (detgan ATLAS cluster, "
        "CaloGAN, LHCb .npz or CaloChallenge HDF5). Writes RUN/checkpoint.pt, history.jsonl and "
        "config.json; --resume continues a stopped run exactly.",
    )
    p.add_argument(
        "--model",
        required=True,
        choices=MODELS,
        help="dense: [K]'s, any grid file; lhcb-conv: LHCb .npz; calochallenge: the layered "
        "WGAN, CaloChallenge files and any layered file (on a file with electronic noise, "
        "e.g. ATLAS clusters, its quick/full presets generate the noise; docs/calo_models.md)",
    )
    p.add_argument("--data", required=True, help="training showers file")
    p.add_argument(
        "--preset", default="quick", choices=PRESETS, help="hyper-parameters (default: %(default)s)"
    )
    add_training(p, "iterations=2000")
    p.set_defaults(func=run_train)

    p = groups["study"].add_parser(
        "calo",
        help="evaluation of a calorimeter run against a held-out showers file",
        description="Generate one shower per reference event and compare: mean images per "
        "layer, per-cell variance, correlation matrix and its MSE, physics variates, nearest "
        "neighbours in the training file, classifier; writes report.html, summary.md/json.",
    )
    p.add_argument("run", help="training run directory")
    p.add_argument(
        "--reference", required=True, help="held-out showers file (not the training file)"
    )
    add_output(p, "report directory")
    p.add_argument(
        "--events", type=int, default=10000, help="reference events used (default: %(default)s)"
    )
    p.add_argument("--no-classifier", action="store_true", help="skip the classifier test")
    add_seed(p)
    add_runtime(p)
    p.set_defaults(func=run_study)

    p = groups["study"].add_parser(
        "calo-params",
        help="parameter study of the dense calorimeter WGAN (Klein): layers, latent, n_critic, λ",
        description="Vary depth (1,2,3), latent_dim (1,10,100), n_critic (1,5,10) and "
        "gp_weight (0,10) one at a time around the preset; several seeds per setting, samples "
        "pooled, compared with a held-out file. Writes DIR/parameter_study.json; runs are reused.",
    )
    p.add_argument("--data", required=True, help="training showers file")
    p.add_argument("--reference", required=True, help="held-out showers file")
    p.add_argument("-o", "--output", required=True, help="study directory (runs are kept)")
    p.add_argument("--preset", default="quick", choices=PRESETS, help="base preset")
    p.add_argument("--seeds", type=int, default=5, help="seeds per setting (default: 5)")
    p.add_argument("--events", type=int, default=5000, help="reference events (default: 5000)")
    add_overrides(p, "base settings", "iterations=1000")
    add_runtime(p)
    p.set_defaults(func=run_params)


def run_train(args: argparse.Namespace) -> int:
    from detgan.studies.calo import NOISY_FILE_SETTINGS, calo_preset, train_calo

    preset = calo_preset(args.model, args.preset, None if args.resume else args.data)
    if preset != calo_preset(args.model, args.preset) and not args.quiet:
        settings = ", ".join(f"{k}={v}" for k, v in NOISY_FILE_SETTINGS.items())
        print(
            f"detgan: '{args.data}' records electronic noise: the {args.preset} preset generates "
            f"it instead of whole deposits ({settings})",
            file=sys.stderr,
        )
    return run_training(args, args.model, configured(args, preset), train_calo, args.data)


def run_study(args: argparse.Namespace) -> int:
    from detgan.studies.calo import run_calo_study

    device = runtime(args)
    if args.events < 1:
        raise DetganError(f"--events must be at least 1, got {args.events}")
    seed_everything(args.seed)
    summary = run_calo_study(
        args.run,
        args.reference,
        args.output,
        n_events=args.events,
        seed=args.seed,
        device=device,
        overwrite=args.overwrite,
        classifier=not args.no_classifier,
        progress=lambda m: print(f"detgan: {m}", file=sys.stderr),
    )
    family, res = next(iter(summary["families"].items()))
    m = res["metrics"]
    out = {"family": family, "correlation_mse": m.get("correlation", {}).get("mse")}
    if "classifier_low" in m:
        out["auc_low"] = m["classifier_low"].get("auc")
    print(json.dumps(out))
    print(f"wrote report to '{args.output}/report.html'")
    return 0


def run_params(args: argparse.Namespace) -> int:
    from detgan.studies.calo import run_parameter_study

    device = runtime(args)
    if args.seeds < 1 or args.events < 1:
        raise DetganError("--seeds and --events must be at least 1")
    rows = run_parameter_study(
        args.data,
        args.reference,
        args.output,
        preset=args.preset,
        seeds=tuple(range(args.seeds)),
        n_events=args.events,
        overrides=read_overrides(args),
        device=device,
        progress=lambda m: print(f"detgan: {m}", file=sys.stderr),
    )
    for row in rows:
        print(json.dumps(row))
    return 0
