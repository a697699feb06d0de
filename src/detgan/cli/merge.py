"""Command ``merge``: join the shards of ``detgan generate --shards K`` into one file."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(commands, groups) -> None:
    p = commands.add_parser(
        "merge",
        help="join the shard files of 'generate --shards K' into one file",
        description="Concatenate the K shard files of one 'detgan generate ... --shards K' "
        "command (any order) into OUTPUT, equal to the unsharded output. Refuses shards of "
        "different runs or settings, missing or repeated shard indices. HDF5 (detgan native, "
        "CaloChallenge) and LHCb .npz files; streamed, written atomically.",
    )
    p.add_argument("output", help="merged file (same kind as the shards: .h5 or .npz)")
    p.add_argument("shards", nargs="+", metavar="SHARD", help="the shard files")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing output instead of refusing"
    )
    p.set_defaults(func=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from detgan.io.shards import merge_shards

    out = merge_shards(args.shards, args.output, overwrite=args.overwrite)
    print(f"merged {len(args.shards)} shards into '{out}'")
    return 0
