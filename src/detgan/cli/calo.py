"""Commands ``simulate calo`` (parameterised e.m. showers) and ``convert`` (showers formats)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from detgan.cli._common import add_output, add_overrides, add_seed, read_overrides
from detgan.io.showers import (
    FORMATS,
    count_events,
    detect_format,
    iter_showers,
    load_showers,
    natural_format,
    showers_writer,
)
from detgan.sim.calorimeter import CaloSimConfig, simulate_to_file
from detgan.sim.geometry import GEOMETRIES
from detgan.utils import DetganError, check_output_path

__all__ = ["register", "run_simulate", "run_convert", "convert_file"]

_FORMAT_HELP = {
    "calochallenge": "CaloChallenge HDF5",
    "calogan": "CaloGAN HDF5",
    "lhcb": "LHCb .npz",
    "native": "detgan showers HDF5 (ATLAS clusters)",
}


def register(commands, groups) -> None:
    p = groups["simulate"].add_parser(
        "calo",
        help="parameterised e.m. calorimeter showers (Grindhammer & Peters)",
        description="Simulate electromagnetic showers with the GFlash-like parameterisation of "
        "calorimeter.md in one of the built-in geometries, written in the geometry's format "
        "(CaloChallenge HDF5, CaloGAN HDF5, LHCb .npz or detgan showers HDF5).",
    )
    p.add_argument("--geometry", required=True, choices=list(GEOMETRIES), help="detector geometry")
    p.add_argument("-n", "--events", type=int, required=True, help="number of showers")
    add_seed(p)
    add_output(p, "output file (.h5 or, for lhcb-ecal, .npz)")
    p.add_argument(
        "--particle",
        choices=["photon", "electron", "positron"],
        help="primary particle (default: the geometry's)",
    )
    p.add_argument("--energy", type=float, help="fixed incident energy in GeV")
    add_overrides(p, "CaloSimConfig", "max_spots=5000")
    p.add_argument("--batch-size", type=int, help="showers per batch (default: 1000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_simulate)

    p = commands.add_parser(
        "convert",
        help="convert showers between CaloChallenge, CaloGAN, LHCb and detgan files",
        description="Convert a showers file to another format with the same cell layout "
        "(units are converted explicitly; provenance is carried over). Formats: "
        + ", ".join(f"{k} ({v})" for k, v in _FORMAT_HELP.items()),
    )
    p.add_argument("input", help="input showers file")
    add_output(p, "output file")
    p.add_argument(
        "--to",
        choices=list(FORMATS),
        help="output format (default: lhcb for .npz, else native, or for a native "
        "input the layout's own format)",
    )
    p.add_argument("--binning", help="CaloChallenge binning: 1-photons, 1-pions, 2, 3 or an XML")
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="cell dtype of CaloChallenge and detgan outputs (default: %(default)s)",
    )
    p.add_argument(
        "--drop-nonfinite",
        action="store_true",
        help="drop events with NaN or inf instead of failing (counted)",
    )
    p.add_argument("--chunk-size", type=int, default=10_000, help="events per read chunk")
    p.set_defaults(func=run_convert)


def _sim_config(args: argparse.Namespace) -> CaloSimConfig:
    values = read_overrides(args, "geometry")
    values["geometry"] = args.geometry
    if args.particle:
        values["particle"] = args.particle
    if args.energy is not None:
        values["energy"] = args.energy * 1000.0
    if args.batch_size is not None:
        values["batch_size"] = args.batch_size
    return CaloSimConfig.from_dict(values)


def run_simulate(args: argparse.Namespace) -> int:
    if args.events < 1:
        raise DetganError(f"-n/--events must be at least 1, got {args.events}")
    if args.workers < 1:
        raise DetganError(f"--workers must be at least 1, got {args.workers}")
    cfg = _sim_config(args)
    if cfg.geo.file_format == "lhcb" and Path(args.output).suffix != ".npz":
        raise DetganError(
            f"lhcb-ecal showers are written as .npz; name the output "
            f"'{Path(args.output).with_suffix('.npz')}'"
        )
    check_output_path(args.output, args.overwrite)
    start = time.perf_counter()
    with tqdm(
        total=args.events,
        unit="shower",
        disable=args.quiet,
        mininterval=0.5,
        desc=f"simulate {cfg.geometry}",
    ) as bar:
        path = simulate_to_file(
            cfg,
            args.events,
            args.seed,
            args.output,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=bar.update,
        )
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.events} {cfg.particle_name} showers ({cfg.geometry}, "
        f"{_FORMAT_HELP.get(cfg.geo.file_format, _FORMAT_HELP['native'])}, seed {args.seed}) "
        f"to {path} in {elapsed:.1f} s "
        f"({args.events / elapsed:.0f} showers/s)"
    )
    return 0


def _target_format(path: Path, source_format: str, layout) -> str:
    if path.suffix == ".npz":
        return "lhcb"
    if source_format == "native":
        return natural_format(layout)
    return "native"


def convert_file(
    source: str | Path,
    target: str | Path,
    to: str | None = None,
    *,
    overwrite: bool = False,
    binning: str | None = None,
    dtype: str = "float32",
    drop_nonfinite: bool = False,
    chunk_size: int = 10_000,
) -> tuple[str, str, int]:
    """Stream ``source`` into ``target`` in format ``to``; returns (from, to, events written)."""
    source, target = Path(source), Path(target)
    check_output_path(target, overwrite)
    fmt = detect_format(source)
    options = {"drop_nonfinite": drop_nonfinite} if fmt != "native" else {}
    if binning and fmt == "calochallenge":
        options["binning"] = binning
    first = load_showers(source, fmt, stop=1, **options)
    to = to or _target_format(target, fmt, first.layout)
    n = count_events(source, fmt)
    if drop_nonfinite:
        n = sum(len(p) for p in iter_showers(source, chunk_size, fmt, **options))
    specs = {k: (v.shape[1:], v.dtype) for k, v in first.conditions.items()}
    attrs = {
        "converted_from": str(source),
        "source_format": fmt,
        "source_attrs": json.dumps(first.meta.get("attrs", {}), default=str),
    }
    writer_options = {"dtype": dtype} if to in ("calochallenge", "native") else {}
    with showers_writer(
        target, to, n, first.layout, attrs, conditions=specs, overwrite=overwrite, **writer_options
    ) as writer:
        for part in iter_showers(source, chunk_size, fmt, **options):
            writer.append(part)
    for notice in first.meta.get("notices", []):
        print(f"detgan: notice: {notice}", file=sys.stderr)
    return fmt, to, n


def run_convert(args: argparse.Namespace) -> int:
    if args.chunk_size < 1:
        raise DetganError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    fmt, to, n = convert_file(
        args.input,
        args.output,
        args.to,
        overwrite=args.overwrite,
        binning=args.binning,
        dtype=args.dtype,
        drop_nonfinite=args.drop_nonfinite,
        chunk_size=args.chunk_size,
    )
    print(f"converted {n} showers from {fmt} to {to}: {args.output}")
    return 0
