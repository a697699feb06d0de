"""Commands ``simulate airshower``, ``inspect`` and ``demo``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from detgan.cli._common import add_output, add_overrides, add_runtime, add_seed, read_overrides
from detgan.io.native import open_h5, read_arrays, read_attrs
from detgan.sim.airshower import PRESETS, VARIANTS, make_config
from detgan.sim.run import write_airshower_file
from detgan.utils import DetganError, check_output_path

__all__ = ["register"]


def register(commands, groups) -> None:
    p = groups["simulate"].add_parser(
        "airshower",
        help="air-shower footprints and traces on a 9x9 array (Erdmann et al. 2018)",
        description="Simulate cosmic-ray air showers with the parameterised model of "
        "airshower.md and write them to an HDF5 file (datasets of airshower.md §16).",
    )
    p.add_argument(
        "--preset",
        default="paper",
        choices=list(PRESETS),
        help="event-level sampling (default: %(default)s)",
    )
    p.add_argument(
        "--variant",
        default="data",
        choices=list(VARIANTS),
        help="detector and composition knobs (default: %(default)s)",
    )
    p.add_argument("-n", "--events", type=int, required=True, help="number of events")
    add_seed(p)
    add_output(p, "output HDF5 file")
    add_overrides(p, "parameter", "s0=800")
    p.add_argument(
        "--store-components",
        action="store_true",
        help="also store the noiseless muon_traces and em_traces",
    )
    p.add_argument("--float16", action="store_true", help="store traces in half precision")
    p.add_argument(
        "--no-traces",
        action="store_true",
        help="omit the traces dataset (footprints and labels only: 1 kB instead of 27 kB/event)",
    )
    p.add_argument(
        "--compression",
        choices=["none", "gzip", "lzf"],
        default=None,
        help="HDF5 compression filter (default: none)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="events simulated and written per step (default: 2000)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: one per available core)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_simulate)

    p = commands.add_parser(
        "inspect",
        help="summarise a detgan file",
        description="Print events, datasets, energy range and provenance.",
    )
    p.add_argument("file", help="an HDF5 file written by detgan")
    p.set_defaults(func=run_inspect)

    p = commands.add_parser(
        "demo",
        help="run the main job on a built-in default",
        description="The whole footprint pipeline on a built-in default: simulate a 'paper' "
        "training sample and a held-out reference, train the 'quick' footprint WGAN, generate "
        "and run the study (Figs. 2-4, comparisons, classifier test). About 15-20 minutes on 2 "
        "CPU cores. Rerunning reuses finished steps and resumes an interrupted training.",
    )
    p.add_argument("-o", "--output", default="detgan-demo", help="output directory")
    p.add_argument(
        "-n", "--events", type=int, default=100_000, help="training events (default: %(default)s)"
    )
    p.add_argument(
        "--reference-events",
        type=int,
        default=20_000,
        help="held-out reference events (default: %(default)s)",
    )
    p.add_argument("--preset", default="quick", help="footprint training preset")
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="stop training after this many iterations (smoke tests; default: the preset's)",
    )
    add_seed(p)
    add_runtime(p)
    p.set_defaults(func=run_demo)


def _overrides(args: argparse.Namespace) -> dict:
    values = read_overrides(args, "preset", "variant")
    if args.store_components:
        values["store_components"] = True
    if args.float16:
        values["traces_dtype"] = "float16"
    if args.no_traces:
        values["store_traces"] = False
    if args.compression:
        values["compression"] = args.compression
    if args.batch_size is not None:
        values["batch_size"] = args.batch_size
    return values


def run_simulate(args: argparse.Namespace) -> int:
    if args.events < 1:
        raise DetganError(f"-n/--events must be at least 1, got {args.events}")
    if args.workers is not None and args.workers < 1:
        raise DetganError(f"--workers must be at least 1, got {args.workers}")
    cfg = make_config(args.preset, args.variant, **_overrides(args))
    check_output_path(args.output, args.overwrite)
    start = time.perf_counter()
    path = write_airshower_file(
        cfg,
        args.events,
        args.seed,
        args.output,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.events} events ({cfg.preset}/{cfg.variant}, seed {args.seed}) to "
        f"{path} in {elapsed:.1f} s ({args.events / elapsed:.0f} events/s)"
    )
    return 0


def airshower_summary(path: str | Path) -> list[str]:
    """Lines describing an air-shower file: per-energy-bin multiplicity and footprint sums."""
    a = read_arrays(path, ["energy", "footprint", "triggered"])
    lines = ["  E [EeV]      events  <N_trig>  <sum log10(S+1)>"]
    edges = [1, 10, 30, 60, 100]
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (a["energy"] >= lo) & (a["energy"] < hi)
        if not sel.any():
            continue
        n_trig = a["triggered"][sel].sum(axis=(1, 2)).mean()
        fp = a["footprint"][sel].sum(axis=(1, 2)).mean()
        lines.append(f"  {lo:>3}-{hi:<3}  {sel.sum():>10}  {n_trig:>8.2f}  {fp:>16.2f}")
    return lines


def showers_summary(path: str | Path) -> list[str] | None:
    """Lines describing a calorimeter showers file, or None if it is not one."""
    from detgan.io.showers import detect_format, load_showers

    try:
        fmt = detect_format(path)
    except DetganError:
        return None
    showers = load_showers(path, format=fmt)
    e_gev = showers.energy / 1e3
    total = showers.cells.sum(axis=1) / 1e3
    lines = [
        f"{path}: {len(showers)} showers, format {fmt}, {showers.n_cells} cells",
        f"incident energy: {e_gev.min():.3g} - {e_gev.max():.3g} GeV (mean {e_gev.mean():.3g})",
        f"deposited energy: mean {total.mean():.3g} GeV, mean fraction "
        f"{np.mean(total / np.maximum(e_gev, 1e-12)):.3f}",
        f"non-zero cells per shower: {np.mean((showers.cells > 0).sum(axis=1)):.1f}",
    ]
    if showers.conditions:
        lines.append("conditions: " + ", ".join(sorted(showers.conditions)))
    meta = {k: v for k, v in showers.meta.items() if k in ("seed", "package_version", "geometry")}
    if meta:
        lines.append("provenance: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    return lines


def run_inspect(args: argparse.Namespace) -> int:
    lines = showers_summary(args.file)
    if lines is not None:
        print("\n".join(lines))
        return 0
    attrs = read_attrs(args.file)
    with open_h5(args.file) as f:
        datasets = {k: (f[k].shape, f[k].dtype) for k in f if hasattr(f[k], "shape")}
    n = max((s[0] for s, _ in datasets.values() if s), default=0)
    print(f"{args.file}: {n} events, kind {attrs.get('kind', 'unknown')}")
    for name, (shape, dtype) in datasets.items():
        print(f"  {name:<14} {str(shape):<20} {dtype}")
    if "energy" in datasets:
        energy = read_arrays(args.file, ["energy"])["energy"]
        print(f"energy: {energy.min():.3g} - {energy.max():.3g} EeV (mean {energy.mean():.3g})")
    keys = ("preset", "variant", "seed", "package_version", "overrides")
    print("provenance: " + ", ".join(f"{k}={attrs[k]}" for k in keys if k in attrs))
    if attrs.get("kind") == "airshower" and {"footprint", "triggered"} <= set(datasets):
        print("\n".join(airshower_summary(args.file)))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from detgan.studies.footprint import run_footprint_study, train_footprint
    from detgan.utils import resolve_device, set_threads

    if args.events < 100 or args.reference_events < 100:
        raise DetganError("the demo needs at least 100 training and 100 reference events")
    set_threads(args.threads if args.threads is not None else 1)
    device = str(resolve_device(args.device))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    train, ref = out / "paper-data-train.h5", out / "paper-data-reference.h5"
    run, report = out / "run-footprint", out / "report"
    samples = ((train, args.events, args.seed), (ref, args.reference_events, args.seed + 1))
    for i, (path, n, seed) in enumerate(samples, start=1):
        print(f"[{i}/4] simulate {n} 'paper'/'data' events (seed {seed}) -> {path}")
        if path.exists():
            print("      exists, reused")
            continue
        cfg = make_config("paper", "data", store_traces=False)
        write_airshower_file(cfg, n, seed, path)
    resume = (run / "checkpoint.pt").exists()
    print(f"[3/4] train the '{args.preset}' footprint WGAN -> {run}" + (" (resuming)" * resume))
    start = time.perf_counter()
    train_footprint(args.preset, train, run, device=device, resume=resume, until=args.iterations)
    print(f"      {time.perf_counter() - start:.0f} s")
    print(f"[4/4] footprint study against the held-out reference -> {report}")
    result = run_footprint_study(run, ref, report, device=device, overwrite=True)
    print("\n".join(demo_summary(result)))
    print(f"\nreport: {report / 'report.md'}")
    return 0


def demo_summary(result: dict) -> list[str]:
    """The study's headline numbers, with the 'quick' preset's quality bars (issue 3)."""
    corr = result["constrainer"]["correlation"]
    dev = result["max_total_decile_deviation"]
    lines = [
        f"constrainer energy vs label correlation: {corr:.3f} (bar >= 0.95)",
        f"largest deviation of the mean total signal per energy decile: {100 * dev:.1f} % "
        "(bar <= 5 %)",
    ]
    if "classifier" in result:
        c = result["classifier"]
        lines.append(
            f"classifier two-sample AUC: {c['auc']:.3f} ± {c['auc_std']:.3f} (bar <= 0.95)"
        )
    return lines
