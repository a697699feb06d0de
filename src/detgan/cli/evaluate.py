"""Command ``evaluate``: compare a candidate sample with a reference and write a report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from detgan.cli._common import add_seed
from detgan.utils import DetganError, set_threads

__all__ = ["register", "run"]

#: §A legacy switches (kept in step with detgan.evaluate.LEGACY_SWITCHES, which a test checks;
#: not imported here so that the command module stays free of torch).
LEGACY = (
    "lhcb-2019",
    "klein-width",
    "cc-histograms",
    "cc-classifier",
    "float64",
    "cc-correlation",
    "prdc-one-line",
)
KINDS = ("auto", "airshower", "footprint", "traces", "calochallenge", "calogan", "lhcb", "native")


def register(commands, groups) -> None:
    p = commands.add_parser(
        "evaluate",
        help="compare a generated sample with a reference: metrics, floors and an HTML report",
        description="Evaluate a candidate (generated) file against a reference file: physics "
        "observables, 1-D distances with bootstrap errors, separation power, KS, per-cell and "
        "correlation statistics, FPD/KPD and a calibrated classifier test, each next to the "
        "reference-vs-reference floor. Writes REPORT/report.html, summary.md and summary.json.",
    )
    p.add_argument("--reference", required=True, help="reference file (the trusted sample)")
    p.add_argument("--candidate", required=True, help="candidate file (the sample under test)")
    p.add_argument("-o", "--output", required=True, help="report folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument(
        "--kind",
        default="auto",
        choices=KINDS,
        help="data family (default: detect from the reference file)",
    )
    p.add_argument(
        "--protocol",
        default="detgan",
        choices=("detgan", "calochallenge"),
        help="'calochallenge' runs the published classifier protocol exactly "
        "(3x2048 units, 50 epochs, 10 runs; slow on a CPU)",
    )
    p.add_argument("--no-classifier", action="store_true", help="skip the classifier tests")
    p.add_argument(
        "--classifier-runs",
        type=int,
        default=0,
        help="independent classifier trainings (default: 3, or 10 for calochallenge)",
    )
    p.add_argument("--no-fpd", action="store_true", help="skip FPD and KPD")
    p.add_argument(
        "--prdc", action="store_true", help="also compute precision/recall/density/coverage"
    )
    p.add_argument(
        "--max-events", type=int, default=0, help="use only the first N events of each file"
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="folder for cached reference features and floors "
        "(default: $XDG_CACHE_HOME/detgan or ~/.cache/detgan; 'none' disables)",
    )
    p.add_argument(
        "--train",
        default=None,
        help="the generator's training file: adds the nearest-neighbour memorisation check "
        "(the reference serves as the held-out sample)",
    )
    p.add_argument(
        "--legacy",
        action="append",
        default=[],
        choices=LEGACY,
        metavar="SWITCH",
        help="reproduce a published convention (repeatable; named in every output): "
        + ", ".join(LEGACY)
        + " (see docs/evaluation.md)",
    )
    p.add_argument("--no-figures", action="store_true", help="write the tables without figures")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="device for the classifier (default: cpu)")
    add_seed(p)
    p.set_defaults(func=run)


def _cache_dir(value: str | None) -> Path | None:
    if value is not None:
        return None if value.lower() == "none" else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "detgan" / "evaluate"


def run(args: argparse.Namespace) -> int:
    from detgan.evaluate import EvaluationSettings, evaluate_files
    from detgan.report import write_report
    from detgan.utils import resolve_device

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise DetganError(f"output '{out}' already exists; pass --overwrite to replace it")
    threads = set_threads(args.threads)
    settings = EvaluationSettings(
        kind=args.kind,
        protocol=args.protocol,
        classifier=not args.no_classifier,
        classifier_runs=args.classifier_runs,
        fpd=not args.no_fpd,
        prdc=args.prdc,
        max_events=args.max_events,
        seed=args.seed,
        device=str(resolve_device(args.device)),
        legacy=tuple(dict.fromkeys(args.legacy)),
    )
    t0 = time.perf_counter()
    say = lambda m: print(f"[{time.perf_counter() - t0:6.1f} s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    evaluation = evaluate_files(
        args.reference,
        args.candidate,
        settings,
        cache_dir=_cache_dir(args.cache_dir),
        progress=say,
        train=args.train,
    )
    say("writing report")
    extra = _extra_files(evaluation)
    write_report(
        evaluation, out, overwrite=args.overwrite, figures=not args.no_figures, extra_files=extra
    )
    _print_summary(evaluation.summary, out, threads, time.perf_counter() - t0)
    return 0


def _extra_files(evaluation) -> dict[str, str]:
    try:
        from detgan.observables_calo import calochallenge_text_files
    except ImportError:
        return {}
    return calochallenge_text_files(evaluation)


def _print_per_energy(m: dict, f: dict) -> None:
    """Separation powers of E_tot/E_inc per incident energy (CaloChallenge dataset 1)."""
    pooled, floor = m.get("pooled", {}), f.get("pooled", {})
    keys = sorted(
        (k for k in pooled if k.startswith("etot_einc_at_")), key=lambda k: int(k.split("_")[-1])
    )
    for k in keys:
        e = int(k.split("_")[-1])
        sep, fl = (d.get(k, {}).get("separation") for d in (pooled, floor))
        num = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731
        print(f"  Etot/Einc at E = {e} MeV: separation power {num(sep)} (floor {num(fl)})")


def _print_summary(summary: dict, out: Path, threads: int, elapsed: float) -> None:
    for family, result in summary["families"].items():
        m, f = result["metrics"], result["floor"]
        line = [f"{family}:"]
        for key in ("classifier_low", "classifier_high"):
            if key in m:
                floor = f.get(key, {}).get("auc", float("nan"))
                line.append(f"AUC {key.split('_')[1]} {m[key]['auc']:.3f} (floor {floor:.3f})")
        if "fpd" in m:
            floor = f.get("fpd", {}).get("value_x1e3", float("nan"))
            line.append(f"FPD×1e3 {m['fpd']['value_x1e3']:.3g} (floor {floor:.3g})")
        if "memorisation" in m:
            floor = f.get("memorisation", {}).get("median_ratio", float("nan"))
            ratio = m["memorisation"]["median_ratio"]
            line.append(f"memorisation ratio {ratio:.3f} (floor {floor:.3f})")
        print("  ".join(line))
        _print_per_energy(m, f)
    for w in summary.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {out / 'report.html'}  ({elapsed:.0f} s, {threads} threads)")
