"""Evaluation of a candidate sample against a reference: load, extract, compare, floor, cache.

The same functions serve the ``detgan evaluate`` command and every study:

- :func:`extract_airshower` / :func:`extract_showers` turn arrays or files into a
  :class:`FamilyData` (per-event observables, classifier inputs, cells, condition, mean images);
- :func:`compare` (from :mod:`detgan.comparison`, re-exported here with the settings and
  :class:`FamilyData`) computes every distance of ``formats_and_metrics.md`` §3 between two
  :class:`FamilyData` objects and returns a JSON-ready dict;
- :func:`evaluate_families` adds the reference-vs-reference floor of §3.8 (two random halves of
  the reference, cached per reference file) next to every number;
- :func:`evaluate_files` does all of it for two files and returns an :class:`Evaluation` that
  :mod:`detgan.report` writes out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detgan import __version__, observables
from detgan.comparison import (  # re-exported: studies and the command import them from here
    AIRSHOWER_KINDS,
    LEGACY_SWITCHES,
    EvaluationSettings,
    FamilyData,
    compare,
    memorisation_with_floor,
    nn_representation,
    split_halves,
)
from detgan.utils import DetganError

__all__ = [
    "EvaluationSettings",
    "FamilyData",
    "Evaluation",
    "extract_airshower",
    "compare",
    "split_halves",
    "evaluate_families",
    "evaluate_files",
    "file_hash",
    "AIRSHOWER_KINDS",
    "LEGACY_SWITCHES",
    "nn_representation",
]

# ----------------------------------------------------------------------------- extraction


def _log10_energy(arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    e = arrays.get("energy")
    return None if e is None else np.log10(np.asarray(e, np.float64) * 1e18)


def extract_airshower(
    arrays: Mapping[str, np.ndarray],
    family: str,
    *,
    layout: str = "offset",
    trace_rebin: int = 5,
) -> FamilyData:
    """Footprint or trace observables and classifier inputs from air-shower arrays (§16).

    footprint: low = [f (N, 81) = log10(S + 1) per station]; cells = corr = f.
    traces: low = log10(1 + traces summed over ``trace_rebin`` bins) (N, 81·80/rebin);
    cells = corr = log10(1 + station integral) (N, 81). The condition log10(E/eV) is prepended
    to ``low`` when the arrays carry ``energy``.
    """
    cond = _log10_energy(arrays)
    if family == "footprint":
        f = np.asarray(arrays["footprint"], np.float64)
        feats = observables.footprint_observables(f, layout=layout)
        flat = f.reshape(len(f), -1)
        data = FamilyData(
            family, feats, flat, flat, flat, cond, labels=dict(observables.FOOTPRINT_LABELS)
        )
        data.images = {"mean footprint": f.mean(0)}
        data.bins = {"n_stations": np.arange(0, f[0].size + 2) - 0.5}
    elif family == "traces":
        data = _extract_traces(np.asarray(arrays["traces"]), cond, trace_rebin)
    else:
        raise DetganError(f"unknown air-shower family '{family}'; use footprint or traces")
    if cond is not None:
        data.low = np.concatenate([cond[:, None], data.low], 1)
    return data


def _extract_traces(
    tr: np.ndarray, cond: np.ndarray | None, rebin: int, chunk: int = 2000
) -> FamilyData:
    """Trace features in event chunks, so float64 copies never exceed ``chunk`` events."""
    parts, pooled, low, integ = [], [], [], []
    mean_trace = np.zeros(tr.shape[-1])
    for i in range(0, len(tr), chunk):
        c = np.asarray(tr[i : i + chunk], np.float64)
        parts.append(observables.trace_observables(c))
        st_feats = observables.trace_station_observables(c)
        has = c.reshape(len(c), -1, c.shape[-1]).sum(-1) > 0
        st_feats["_event"] = (i + np.nonzero(has)[0]).astype(
            np.float64
        )  # owner, for the floor split
        pooled.append(st_feats)
        low.append(
            np.log10(1.0 + observables.rebin_traces(c, rebin))
            .reshape(len(c), -1)
            .astype(np.float32)
        )
        s = c.reshape(len(c), -1, c.shape[-1])
        integ.append(np.log10(1.0 + s.sum(-1)))
        mean_trace += s[np.arange(len(c)), s.sum(-1).argmax(1)].sum(0)
    cat = lambda ds: {k: np.concatenate([d[k] for d in ds]) for k in ds[0]}  # noqa: E731
    st = np.concatenate(integ)
    data = FamilyData(
        "traces",
        cat(parts),
        np.concatenate(low),
        st,
        st,
        cond,
        pooled=cat(pooled),
        labels=dict(observables.TRACE_LABELS),
    )
    data.images = {
        "mean hottest-station trace": mean_trace / len(tr),
        "mean station log10(1+S)": st.mean(0).reshape(tr.shape[1], tr.shape[2]),
    }
    data.bins = {"n_triggered": np.arange(0, tr.shape[1] * tr.shape[2] + 2) - 0.5}
    return data


# ----------------------------------------------------------------------------- floor and files


@dataclasses.dataclass
class Evaluation:
    """Result of an evaluation: the JSON summary (§3.9) and, for figures, the samples compared.

    ``summary`` has ``inputs``, ``settings``, ``environment``, ``families`` (per family:
    ``metrics`` = reference vs candidate, ``floor`` = reference half A vs half B) and ``warnings``.
    ``samples`` maps a family to its (reference, candidate) :class:`FamilyData`.
    """

    summary: dict[str, Any]
    samples: dict[str, tuple[FamilyData, FamilyData]]


def _floor(ref: FamilyData, settings: EvaluationSettings) -> dict[str, Any]:
    a, b = split_halves(len(ref), settings.seed)
    if len(a) < 10:
        return {"note": f"reference too small for a split-half floor ({len(ref)} events)"}
    out = compare(ref.select(a), ref.select(b), settings)
    out["split"] = {"n_a": len(a), "n_b": len(b), "seed": settings.seed}
    return out


def _environment() -> dict[str, Any]:
    return {
        "detgan": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }


def _warnings_for(
    family: str, main: dict[str, Any], ref: FamilyData, cand: FamilyData
) -> list[str]:
    out = []
    cks = main.get("condition_ks")
    if cks and cks["pvalue"] < 1e-3:
        out.append(
            f"{family}: the condition (energy) distributions differ (KS p = {cks['pvalue']:.1e}); "
            "the classifier may separate the samples on the condition alone"
        )
    if len(ref) != len(cand):
        out.append(
            f"{family}: unequal sample sizes ({len(ref)} reference, {len(cand)} candidate); "
            "the classifier subsamples the larger one"
        )
    for group in ("features", "pooled"):
        for name, m in main.get(group, {}).items():
            for side in ("reference", "candidate"):
                if m.get(f"separation_undefined_{side}", 0):
                    out.append(
                        f"{family}: feature '{name}' undefined for "
                        f"{m[f'separation_undefined_{side}']} {side} entries (excluded)"
                    )
    return out


def evaluate_families(
    references: Mapping[str, FamilyData],
    candidates: Mapping[str, FamilyData],
    settings: EvaluationSettings,
    *,
    floors: Mapping[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """Compare each family and attach its floor; ``floors`` reuses cached floors by family.

    Returns (per-family results, floors actually used, warnings).
    """
    say = progress or (lambda _m: None)
    results, used, notes = {}, {}, []
    for family, ref in references.items():
        cand = candidates[family]
        say(f"{family}: reference vs candidate ({len(ref)} / {len(cand)} events)")
        main = compare(ref, cand, settings)
        floor = (floors or {}).get(family)
        if floor is None:
            say(f"{family}: reference-vs-reference floor (two halves)")
            floor = _floor(ref, settings)
        used[family] = floor
        results[family] = {"metrics": main, "floor": floor, "labels": dict(ref.labels)}
        notes += _warnings_for(family, main, ref, cand)
    return results, used, notes


def file_hash(path: str | Path, block: int = 1 << 20) -> str:
    """sha256 of a file's content (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _detect_kind(path: Path) -> str:
    """'airshower' for native air-shower files, else the showers format name."""
    if path.suffix != ".npz":
        from detgan.io.native import open_h5

        with open_h5(path) as f:
            if "footprint" in f or "traces" in f:
                return "airshower"
    from detgan.io.showers import detect_format

    return detect_format(path)


def _airshower_families(ref_path: Path, cand_path: Path, kind: str) -> list[str]:
    from detgan.io.native import open_h5

    with open_h5(ref_path) as fr, open_h5(cand_path) as fc:
        have = [k for k in AIRSHOWER_KINDS if k in fr and k in fc]
    if kind in AIRSHOWER_KINDS:
        if kind not in have:
            raise DetganError(
                f"--kind {kind}: both files need a '{kind}' dataset; "
                f"'{ref_path}' and '{cand_path}' share only {have or 'none'}"
            )
        return [kind]
    if not have:
        raise DetganError(f"'{ref_path}' and '{cand_path}' share no footprint or traces dataset")
    return have


def _load_airshower(path: Path, family: str, s: EvaluationSettings) -> FamilyData:
    from detgan.io.native import open_h5, read_arrays, read_attrs

    with open_h5(path) as f:
        names = [family] + (["energy"] if "energy" in f else [])
    arrays = read_arrays(path, names, stop=s.max_events or None)
    attrs = read_attrs(path)
    data = extract_airshower(
        arrays, family, layout=str(attrs.get("layout", "offset")), trace_rebin=s.trace_rebin
    )
    data.meta = {"path": str(path), "n_events": len(data)}
    return data


def _cache_key(digest: str, family: str, s: EvaluationSettings) -> str:
    keyed = {k: v for k, v in s.to_dict().items() if k not in ("kind", "device")}
    text = json.dumps(
        {"file": digest, "family": family, "settings": keyed, "version": __version__},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cache_load(path: Path) -> tuple[FamilyData, dict[str, Any]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        info = json.loads(str(arrays.pop("__info__")))
    except (OSError, ValueError, KeyError, EOFError):
        return None  # unreadable or stale: recompute
    data = FamilyData.from_arrays(info["family"], arrays, info["labels"], info["meta"])
    return data, info["floor"]


def _cache_save(path: Path, data: FamilyData, floor: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = json.dumps(
        {"family": data.family, "labels": data.labels, "meta": data.meta, "floor": floor}
    )
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __info__=np.array(info), **data.arrays())
    tmp.replace(path)


def evaluate_files(
    reference: str | Path,
    candidate: str | Path,
    settings: EvaluationSettings | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    train: str | Path | None = None,
) -> Evaluation:
    """Evaluate a candidate file against a reference file (any supported kind).

    Reference features and floors are cached in ``cache_dir`` (pickle-free ``.npz`` keyed by
    the reference content hash, the family, the settings and the package version). ``train``,
    the generator's training file, adds the nearest-neighbour memorisation check (§3.6) with the
    reference as the held-out set H; its floor puts reference half B in place of the candidate.
    """
    s = settings or EvaluationSettings()
    ref_path, cand_path = Path(reference), Path(candidate)
    for p in (ref_path, cand_path, *([Path(train)] if train else [])):
        if not p.is_file():
            raise DetganError(f"file '{p}' not found")
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    kind = _detect_kind(ref_path) if s.kind == "auto" else s.kind
    digest = file_hash(ref_path)
    refs, cands, floors, hits, keys = {}, {}, {}, [], {}
    for family, loader in _families(kind, ref_path, cand_path, s):
        key = _cache_key(digest, family, s)
        cached = _cache_load(Path(cache_dir) / f"{key}.npz") if cache_dir else None
        if cached is None:
            say(f"{family}: computing reference observables")
            ref = loader(ref_path)
        else:
            ref = cached[0]
            floors[ref.family] = cached[1]
            hits.append(ref.family)
        say(f"{family}: computing candidate observables")
        cand = loader(cand_path)
        _check_compatible(ref, cand, ref_path, cand_path)
        refs[ref.family], cands[ref.family], keys[ref.family] = ref, cand, key
    results, used, notes = evaluate_families(refs, cands, s, floors=floors, progress=progress)
    if cache_dir:
        for family in refs:
            if family not in hits:
                _cache_save(Path(cache_dir) / f"{keys[family]}.npz", refs[family], used[family])
    if train:
        _add_memorisation(results, refs, cands, Path(train), kind, s, say)
    summary = {
        "inputs": {
            "reference": str(reference),
            "candidate": str(candidate),
            "kind": kind,
            "reference_sha256": digest,
            "candidate_sha256": file_hash(cand_path),
            "n_reference": {f: len(d) for f, d in refs.items()},
            "n_candidate": {f: len(d) for f, d in cands.items()},
            "reference_cache_hit": hits,
            "train": None if train is None else str(train),
            "train_sha256": None if train is None else file_hash(train),
        },
        "settings": {**s.to_dict(), "classifier_settings": s.classifier_settings().to_dict()},
        "environment": _environment(),
        "families": results,
        "warnings": notes,
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
    return Evaluation(summary, {f: (refs[f], cands[f]) for f in refs})


def _describe(data: FamilyData) -> str:
    dataset = f" dataset {data.meta['dataset']}" if "dataset" in data.meta else ""
    return f"{data.family}{dataset} with {np.shape(data.cells)[1]} cells per event"


def _check_compatible(ref: FamilyData, cand: FamilyData, ref_path: Path, cand_path: Path) -> None:
    """Refuse samples of different geometries (they would fail deep inside a metric)."""
    if ref.family != cand.family or np.shape(ref.low)[1:] != np.shape(cand.low)[1:]:
        raise DetganError(
            f"candidate '{cand_path}' is {_describe(cand)} but reference '{ref_path}' is "
            f"{_describe(ref)}; compare samples of one detector geometry"
        )


def _add_memorisation(results, refs, cands, train: Path, kind: str, s, say) -> None:
    """Load the training file per family and add ``memorisation`` to metrics and floor (a new
    floor dict, so the cached floor stays independent of the training file)."""
    loaders = dict(_families(kind, train, train, s))
    for family in results:
        say(f"{family}: memorisation check against the training file")
        t = loaders[next(iter(loaders))] if family not in loaders else loaders[family]
        main, floor = memorisation_with_floor(t(train), refs[family], cands[family], s.seed)
        results[family]["metrics"]["memorisation"] = main
        results[family]["floor"] = {**results[family]["floor"], "memorisation": floor}


def _families(kind: str, ref_path: Path, cand_path: Path, s: EvaluationSettings):
    """(family, loader) pairs for a kind; loaders map a path to :class:`FamilyData`."""
    if kind in ("airshower", *AIRSHOWER_KINDS):
        for fam in _airshower_families(ref_path, cand_path, kind):
            yield fam, (lambda p, fam=fam: _load_airshower(p, fam, s))
        return
    from detgan.observables_calo import load_calo_family

    yield kind, (lambda p: load_calo_family(p, kind, s))
