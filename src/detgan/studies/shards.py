"""Sharded generation: one of K contiguous parts of what ``detgan generate`` would write.

Shard i of K of N events holds events [⌊i·N/K⌋, ⌊(i+1)·N/K⌋) of the unsharded output: the
same energies or conditions (drawn or read for all N events, then sliced) and the same
generated events, because the model's sampler still draws the latent noise of every event in
order while :class:`~detgan.distributed.EventWindow` runs the generator only on the batches
holding the shard's events. The attributes are the unsharded ones plus
:data:`~detgan.io.shards.SHARD_ATTRS` (``n_events``: the shard's count), so
:func:`detgan.io.shards.merge_shards` restores the unsharded file exactly.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from detgan import __version__
from detgan.distributed import EventWindow
from detgan.io.shards import shard_attrs, shard_range
from detgan.utils import check_output_path

__all__ = ["generate_shard"]


def generate_shard(
    run_dir: str | os.PathLike,
    n: int | None,
    energy_spec: str,
    seed: int,
    out: str | os.PathLike,
    shards: int,
    index: int,
    *,
    device: str = "cpu",
    overwrite: bool = False,
) -> Path:
    """Write shard ``index`` of ``shards`` of the output of ``generate`` (footprint runs) or
    ``generate_calo`` (calorimeter runs) with the same arguments."""
    from detgan.studies.calo import is_calo_run

    check_output_path(out, overwrite)  # before the work, not after it
    make = _calo_shard if is_calo_run(run_dir) else _footprint_shard
    return make(run_dir, n, energy_spec, seed, out, shards, index, device, overwrite)


def _footprint_shard(run_dir, n, energy_spec, seed, out, shards, index, device, overwrite):
    from detgan.io.native import write_arrays
    from detgan.studies.footprint import load_footprint_model, parse_energy_spec

    model = load_footprint_model(run_dir, device)
    energy = parse_energy_spec(energy_spec, n, seed)
    total = len(energy)
    start, stop = shard_range(total, shards, index)
    window = dataclasses.replace(model, generator=EventWindow(model.generator, start, stop))
    footprint = window.sample(energy, seed)[start:stop]
    energy = energy[start:stop]
    attrs = {  # those of studies.footprint.generate (tests/test_merge.py compares them)
        "generator": "detgan footprint WGAN",
        "run_dir": str(run_dir),
        "step": model.step,
        "seed": int(seed),
        "energy_spec": str(energy_spec),
        "config_json": model.setup.to_json(),
        "n_side": 9,
        "trigger_threshold": 10 ** float(model.extra["threshold"]) - 1.0,
        "n_events": len(energy),
        **shard_attrs(total, shards, index),
    }
    arrays = {"footprint": footprint, "energy": energy, "log10_energy": np.log10(energy) + 18.0}
    return write_arrays(out, arrays, attrs, overwrite=overwrite)


def _calo_shard(run_dir, n, energy_spec, seed, out, shards, index, device, overwrite):
    from detgan.io.showers import Showers, save_showers
    from detgan.studies.calo import conditions_from_spec, load_calo_model

    model = load_calo_model(run_dir, device)
    cond, energy, conditions = conditions_from_spec(model, energy_spec, n, seed)
    total = len(energy)
    start, stop = shard_range(total, shards, index)
    window = dataclasses.replace(model, generator=EventWindow(model.generator, start, stop))
    cells = window.sample(cond, seed)[start:stop].astype(np.float32)
    part = {k: v[start:stop] for k, v in conditions.items()}
    showers = Showers(energy[start:stop], cells, model.layout, part, {"source_format": "generated"})
    attrs = {  # those of studies.calo.generate_calo (tests/test_merge.py compares them)
        "generator": f"detgan calo WGAN ({model.kind})",
        "run_dir": str(run_dir),
        "step": model.step,
        "seed": int(seed),
        "energy_spec": str(energy_spec),
        "config_json": model.setup.to_json(),
        "detgan_version": __version__,
        **shard_attrs(total, shards, index),
    }
    return save_showers(showers, out, model.extra["format"], attrs=attrs, overwrite=overwrite)
