"""Running simulators in batches: ordered parallel execution and streamed file output."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from detgan.io.native import H5Writer
from detgan.sim.airshower import (
    AirshowerConfig,
    batch_slices,
    make_config,
    output_datasets,
    simulate_batch,
)
from detgan.utils import available_cpus

__all__ = ["parallel_batches", "write_airshower_file", "airshower_attrs", "default_workers"]


def default_workers(n_batches: int) -> int:
    """One worker process per available core, but never more than there are batches."""
    return max(1, min(available_cpus(), n_batches))


def parallel_batches(
    fn: Callable[..., Any], jobs: Iterable[tuple], workers: int = 1
) -> Iterator[Any]:
    """Yield ``fn(*job)`` for every job, in order, using up to ``workers`` processes.

    At most ``workers + 1`` results are pending at any time, so memory stays bounded however
    many jobs there are. Workers are forked and must only use numpy (no torch thread pools).
    """
    if workers <= 1:
        for job in jobs:
            yield fn(*job)
        return
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: deque = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(fn, *job))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def airshower_attrs(cfg: AirshowerConfig, seed: int, n: int) -> dict[str, Any]:
    """File attributes of airshower.md §16.4: names, overrides, seed, every resolved value."""
    reference = make_config(cfg.preset, cfg.variant)
    runtime = {"batch_size", "store_components", "store_traces", "traces_dtype", "compression"}
    overrides = [name for name in cfg.differences(reference) if name not in runtime]
    resolved = cfg.resolved()
    return {
        **resolved,
        "overrides": overrides,
        "seed": seed,
        "config_json": json.dumps({**resolved, "seed": seed}, sort_keys=True),
        "n_events": n,
        "kind": "airshower",
    }


def write_airshower_file(
    cfg: AirshowerConfig,
    n: int,
    seed: int,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Simulate ``n`` events and stream them into ``path`` (atomic; memory bounded by batches)."""
    slices = batch_slices(cfg, n)
    workers = default_workers(len(slices)) if workers is None else max(1, workers)
    jobs = [(cfg, seed, b, size) for b, (_, size) in enumerate(slices)]
    with (
        H5Writer(
            path,
            n,
            output_datasets(cfg),
            airshower_attrs(cfg, seed, n),
            overwrite=overwrite,
            chunk_events=min(cfg.batch_size, 256),
            compression=cfg.compression,
        ) as writer,
        tqdm(
            total=n,
            unit="ev",
            desc=f"simulate {cfg.preset}/{cfg.variant}",
            disable=not progress,
            mininterval=0.5,
        ) as bar,
    ):
        for (start, size), arrays in zip(slices, parallel_batches(simulate_batch, jobs, workers)):
            writer.write(start, arrays)
            bar.update(size)
    return Path(path)
