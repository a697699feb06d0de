"""The energy-reconstruction study that proves a refiner, from regressors to the report.

``paper_methods.md`` §3 [E18 §5, arXiv:1802.03325]: an AixNet-like energy regressor [EGW18]
trained on refined simulation reconstructs 'data' with a smaller bias than one trained on the
original simulation. The study trains the regressor on 'sim', refined 'sim' and 'data'
(training parts of the files), evaluates all three on held-out 'data' (and 'sim'-trained on
held-out 'sim', the paper's benchmark) and writes bias and resolution per energy bin, scatter
plots, Fig. 5 (a matched event), Fig. 7 (critic loss) and classifier two-sample AUCs to
``summary.json`` and a page::

    run_refine_study(sim_path, data_path, refiner_run, out_dir, *, config=None, ...)

The refiner itself (setup, training, refining files) is :mod:`detgan.studies.refine`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detgan import __version__, losses
from detgan.config import Config, require
from detgan.io.native import read_arrays
from detgan.studies.refine import (
    RefinerModel,
    count_events,
    from_net,
    load_refiner,
    split_index,
    to_net,
)
from detgan.studies.refine_report import study_figures, write_study_report
from detgan.train import HISTORY_NAME

__all__ = [
    "RefineStudyConfig",
    "STUDY_PRESETS",
    "train_regressor",
    "predict_energy",
    "energy_performance",
    "trace_features",
    "one_feature_auc",
    "auc_without_each",
    "classifier_diagnostics",
    "run_refine_study",
]

_SAMPLES = ("sim_train", "data_train", "sim_test", "data_test")


# ----------------------------------------------------------------------- settings and regressor
@dataclasses.dataclass(frozen=True)
class RefineStudyConfig(Config):
    """Settings of the downstream study.

    Regressor: ``max_train`` training events per sample ('sim', refined 'sim', 'data'; the
    first events of the files, never the held-out part), ``epochs``, ``batch_size``, Adam
    ``lr`` (halved after 60 % and 85 % of the epochs), ``width`` of the AixNet-like network,
    ``val_fraction`` of the training sample used to keep the best epoch. ``max_test`` caps the
    held-out events; ``energy_edges`` are the energy bins in EeV; ``classifier_runs`` the
    repetitions of the classifier two-sample test.
    """

    max_train: int = 6000
    max_test: int = 3000
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    width: int = 32
    val_fraction: float = 0.1
    energy_edges: tuple = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0)
    classifier_runs: int = 3
    seed: int = 0

    def validate(self) -> None:
        require(
            self.max_train >= 50 and self.max_test >= 50, "max_train and max_test must be >= 50"
        )
        require(self.epochs >= 1 and self.batch_size >= 2, "epochs >= 1 and batch_size >= 2 needed")
        require(self.lr > 0 and self.width >= 4, "lr must be positive and width at least 4")
        require(0.0 < self.val_fraction < 0.5, "val_fraction must lie in (0, 0.5)")
        edges = list(self.energy_edges)
        require(
            len(edges) >= 2 and all(a < b for a, b in zip(edges, edges[1:])),
            "energy_edges must be at least two increasing energies in EeV",
        )
        require(self.classifier_runs >= 1, "classifier_runs must be at least 1")


#: Study presets (the refiner preset of the same name is trained separately).
STUDY_PRESETS: dict[str, RefineStudyConfig] = {
    "quick": RefineStudyConfig(),
    "full": RefineStudyConfig(max_train=20000, max_test=10000, epochs=15, classifier_runs=5),
    "paper": RefineStudyConfig(
        max_train=75000, max_test=25000, epochs=30, width=64, batch_size=128, classifier_runs=5
    ),
}


def _label_stats(energy: np.ndarray) -> tuple[float, float]:
    lg = np.log10(energy)
    return float(lg.mean()), float(lg.std() or 1.0)


def train_regressor(
    x: Tensor, energy: np.ndarray, config: RefineStudyConfig, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, tuple[float, float]]:
    """Train an AixNet-like regressor of y = (log10 E − μ)/σ on traces u (N, 9, 9, T).

    Minimises the MSE with Adam; the epoch with the lowest MSE on the last ``val_fraction``
    of the sample is kept. Returns the model (eval mode) and (μ, σ) of log10(E/EeV).
    """
    from detgan.models.refiner import TraceRegressor

    dev = torch.device(device)
    stats = _label_stats(energy)
    y = torch.as_tensor((np.log10(energy) - stats[0]) / stats[1], dtype=torch.float32)
    n_val = max(1, int(len(y) * config.val_fraction))
    xt, yt, xv, yv = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = TraceRegressor(config.width, x.shape[-1]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    best, best_state = math.inf, None
    for epoch in range(config.epochs):
        for group in opt.param_groups:
            group["lr"] = config.lr * 0.5 ** sum(epoch >= f * config.epochs for f in (0.6, 0.85))
        _train_epoch(model, opt, xt, yt, config.batch_size, gen)
        val = float(np.mean((_predict(model, xv, dev) - yv.numpy()) ** 2))
        if val < best:
            best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), stats


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    gen: torch.Generator,
) -> None:
    """One pass over (x, y) in batches of a random permutation drawn from ``gen``."""
    dev = next(model.parameters()).device
    model.train()
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(perm), batch_size):
        idx = perm[i : i + batch_size]
        loss = losses.regression_loss(y[idx].to(dev), model(x[idx].to(dev)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _predict(model: nn.Module, x: Tensor, device: torch.device, batch: int = 512) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = [model(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(out).numpy().astype(np.float64)


def predict_energy(model: nn.Module, stats: tuple[float, float], x: Tensor) -> np.ndarray:
    """Reconstructed energies in EeV: traces u (N, 9, 9, T) → (N,)."""
    dev = next(model.parameters()).device
    return 10.0 ** (_predict(model, x, dev) * stats[1] + stats[0])


def energy_performance(e_true: np.ndarray, e_rec: np.ndarray, edges: Any) -> dict[str, Any]:
    """Bias and resolution of r = (E_rec − E_true)/E_true per bin of E_true (EeV).

    Per bin: n, bias = mean r (error std/√n), resolution = std r (error std/√(2(n − 1))).
    Overall: ``mean_abs_bias`` = mean over bins of |bias|, ``mean_resolution`` = mean over
    bins of the resolution, and bias/resolution of all events together.
    """
    e_true, e_rec = np.asarray(e_true, np.float64), np.asarray(e_rec, np.float64)
    r = (e_rec - e_true) / e_true
    edges = np.asarray(edges, np.float64)
    which = np.digitize(e_true, edges) - 1
    bins = [_bin_stats(r[which == b], edges[b], edges[b + 1]) for b in range(len(edges) - 1)]
    filled = [b for b in bins if b["n"] > 1]
    return {
        "bins": bins,
        "mean_abs_bias": float(np.mean([abs(b["bias"]) for b in filled])),
        "mean_resolution": float(np.mean([b["resolution"] for b in filled])),
        "bias_all": float(r.mean()),
        "resolution_all": float(r.std(ddof=1)),
    }


def _bin_stats(r: np.ndarray, low: float, high: float) -> dict[str, Any]:
    """n, bias and resolution (with errors) of the relative residuals r of one bin."""
    n = len(r)
    sd = float(r.std(ddof=1)) if n > 1 else float("nan")
    return {
        "low": float(low),
        "high": float(high),
        "n": n,
        "bias": float(r.mean()) if n else float("nan"),
        "bias_err": sd / math.sqrt(n) if n > 1 else float("nan"),
        "resolution": sd,
        "resolution_err": sd / math.sqrt(2 * (n - 1)) if n > 1 else float("nan"),
    }


# ---------------------------------------------------------------- classifier and event features
def trace_features(traces: np.ndarray) -> dict[str, np.ndarray]:
    """Per-event features for the classifier test: trace observables of the hottest station
    and the whole event plus footprint observables of log10(S + 1). (N, 9, 9, T) → dict (N,)."""
    from detgan.observables import footprint_observables, trace_observables

    s = np.asarray(traces, np.float64).sum(-1)
    footprint = np.where(s > 0, np.log10(s + 1.0), 0.0)
    feats = trace_observables(traces)
    feats.update({f"fp_{k}": v for k, v in footprint_observables(footprint).items()})
    return feats


def _auc(
    ref_f: dict[str, np.ndarray], cand_f: dict[str, np.ndarray], config: RefineStudyConfig
) -> dict[str, float]:
    """Classifier two-sample AUC on the :func:`trace_features` of two samples."""
    from detgan.metrics import classifier_two_sample_test
    from detgan.observables import feature_matrix

    xr, _ = feature_matrix(ref_f, reference=ref_f)
    xc, _ = feature_matrix(cand_f, names=list(ref_f), reference=ref_f)
    if xc.shape[1] != xr.shape[1]:  # an undefined-feature indicator only one sample needs
        names = [k for k in ref_f if not (np.isnan(ref_f[k]).any() or np.isnan(cand_f[k]).any())]
        xr, _ = feature_matrix(ref_f, names, ref_f)
        xc, _ = feature_matrix(cand_f, names, ref_f)
    res = classifier_two_sample_test(xr, xc, seed=config.seed, n_runs=config.classifier_runs)
    return {"auc": res.auc, "auc_std": res.auc_std}


def auc_without_each(
    ref_f: dict[str, np.ndarray], cand_f: dict[str, np.ndarray], config: RefineStudyConfig
) -> dict[str, float]:
    """The classifier two-sample AUC with each feature left out in turn: {feature: AUC}.

    One-feature AUCs miss what the classifier finds in combinations (a rise time that is right
    on average but wrong for the signal and the neighbours it comes with); the drop from the
    full AUC when a feature is left out shows what the classifier relies on."""
    out = {}
    for name in ref_f:
        keep = [k for k in ref_f if k != name]
        out[name] = _auc({k: ref_f[k] for k in keep}, {k: cand_f[k] for k in keep}, config)["auc"]
    return out


#: log10 S (VEM) bins of the hottest station for the timing diagnostic.
TIMING_EDGES = (2.0, 3.0, 4.0, 5.0, 6.0, 7.5)


def one_feature_auc(reference: np.ndarray, candidate: np.ndarray) -> float:
    """How well one feature alone separates two samples: max(AUC, 1 − AUC) of the raw values
    (0.5: indistinguishable, 1: disjoint), non-finite values left out; NaN if a side is empty."""
    from detgan.classifier import roc_auc

    x, y = reference[np.isfinite(reference)], candidate[np.isfinite(candidate)]
    if not len(x) or not len(y):
        return float("nan")
    auc = roc_auc(np.r_[x, y], np.r_[np.zeros(len(x)), np.ones(len(y))])
    return max(auc, 1.0 - auc)


def classifier_diagnostics(features: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """What the classifier can see, for samples ``data``, ``sim``, ``refined`` of
    :func:`trace_features`: the one-feature AUC of every feature against 'data', and per log10 S
    bin of the hottest station (:data:`TIMING_EDGES`) its events, median rise and fall times
    and the rise time's one-feature AUC against 'data' in that bin."""
    data, others = features["data"], [k for k in features if k != "data"]
    feature_auc = {k: {c: one_feature_auc(data[k], features[c][k]) for c in others} for k in data}
    timing = []
    for lo, hi in zip(TIMING_EDGES[:-1], TIMING_EDGES[1:]):
        row: dict[str, Any] = {"log10_s": [lo, hi]}
        sel = {
            k: (f["log10_integral"] >= lo) & (f["log10_integral"] < hi) for k, f in features.items()
        }
        for k, f in features.items():
            m = sel[k]
            row[k] = {
                "n": int(m.sum()),
                "rise_median": float(np.median(f["rise_time"][m])) if m.any() else float("nan"),
                "fall_median": float(np.median(f["fall_time"][m])) if m.any() else float("nan"),
            }
            if k != "data":
                row[k]["rise_auc"] = one_feature_auc(
                    data["rise_time"][sel["data"]], f["rise_time"][m]
                )
        timing.append(row)
    return {"feature_auc": feature_auc, "hottest_timing": timing}


def _matched_brightness(candidate: np.ndarray, data: np.ndarray) -> dict[str, float]:
    """Matched events: ratio of the hottest-station integral, candidate / data (median, 16–84 %)."""
    c = candidate.astype(np.float64).sum(-1).reshape(len(candidate), -1).max(1)
    d = data.astype(np.float64).sum(-1).reshape(len(data), -1).max(1)
    ok = d > 0
    q16, q50, q84 = np.percentile(c[ok] / d[ok], [16, 50, 84])
    return {"median": float(q50), "q16": float(q16), "q84": float(q84)}


def _multiplicity(traces: np.ndarray) -> float:
    return float((traces.max(-1) > 0).sum((1, 2)).mean())


# ------------------------------------------------------------------------------------ the study
def _study_samples(
    model: RefinerModel, sim_path: Any, data_path: Any, cfg: RefineStudyConfig
) -> dict[str, Any]:
    """Training parts (first events) and held-out parts (after the refiner's holdout start)."""
    n_sim, n_data = count_events(sim_path), count_events(data_path)
    holdout = model.setup.data.holdout
    h_sim, h_data = split_index(n_sim, holdout), split_index(n_data, holdout)
    require(
        h_sim < n_sim and h_data < n_data,
        "no held-out events: the refiner was trained with holdout 0; retrain with holdout > 0",
    )
    k = min(cfg.max_train, h_sim, h_data)
    t = min(cfg.max_test, n_sim - h_sim, n_data - h_data)
    read = lambda p, a, b: read_arrays(p, ["traces", "energy"], start=a, stop=b)  # noqa: E731
    return {
        "sim_train": read(sim_path, 0, k),
        "data_train": read(data_path, 0, k),
        "sim_test": read(sim_path, h_sim, h_sim + t),
        "data_test": read(data_path, h_data, h_data + t),
        "ranges": {
            "train": [0, k],
            "sim_test": [h_sim, h_sim + t],
            "data_test": [h_data, h_data + t],
        },
        "matched": h_sim == h_data,
    }


def _history(run_dir: Path) -> dict[str, list[float]]:
    path = run_dir / HISTORY_NAME
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {k: [float(r.get(k, float("nan"))) for r in rows] for k in ("step", "C1", "C2", "time")}


def _truth(key: str, energy: dict[str, np.ndarray]) -> np.ndarray:
    """True energies of the events a prediction ``key`` was made on."""
    return energy["sim_test"] if key == "sim_on_sim" else energy["data_test"]


def _refined_samples(model: RefinerModel, s: dict[str, Any]) -> dict[str, Tensor]:
    """Every sample in network units, plus the refined 'sim' training and held-out parts."""
    net = {k: to_net(s[k]["traces"]) for k in _SAMPLES}
    net["refined_train"] = model.refine_net(net["sim_train"])
    net["refined_test"] = model.refine_net(net["sim_test"])
    return net


def _predictions(
    net: dict[str, Tensor],
    energy: dict[str, np.ndarray],
    cfg: RefineStudyConfig,
    device: torch.device,
    timings: dict[str, float],
    log: Callable[[str], Any],
) -> dict[str, np.ndarray]:
    """Train a regressor on each of 'sim', refined 'sim' and 'data'; predict held-out 'data'
    with all three and held-out 'sim' with the 'sim'-trained one."""
    preds = {}
    for name in ("sim", "refined", "data"):
        t = time.perf_counter()
        reg, stats = train_regressor(
            net[f"{name}_train"], energy[f"{name}_train"], cfg, device=device
        )
        preds[f"{name}_on_data"] = predict_energy(reg, stats, net["data_test"])
        if name == "sim":
            preds["sim_on_sim"] = predict_energy(reg, stats, net["sim_test"])
        timings[f"regressor_{name}_s"] = time.perf_counter() - t
        log(f"regressor trained on {name} in {timings[f'regressor_{name}_s']:.0f} s")
    return preds


def run_refine_study(
    sim_path: str | os.PathLike,
    data_path: str | os.PathLike,
    refiner_run: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: RefineStudyConfig | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    log=print,
) -> Path:
    """The downstream study of ``paper_methods.md`` §3; writes REPORT/ (summary.json,
    report.md, report.html, figures/*.png). ``log`` receives one line per stage."""
    cfg = config or RefineStudyConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_refiner(refiner_run, device)
    s = _study_samples(model, sim_path, data_path, cfg)
    net = _refined_samples(model, s)
    timings["load_and_refine_s"] = time.perf_counter() - t0
    log(
        f"{len(net['sim_train'])} training and {len(net['data_test'])} held-out events; "
        f"refined in {timings['load_and_refine_s']:.0f} s"
    )
    energy = {k: s[k]["energy"] for k in _SAMPLES}
    energy["refined_train"] = energy["sim_train"]
    preds = _predictions(net, energy, cfg, model.device, timings, log)
    perf = {k: energy_performance(_truth(k, energy), p, cfg.energy_edges) for k, p in preds.items()}
    vem = {k: from_net(net[f"{k}_test"]) for k in ("sim", "refined", "data")}
    t = time.perf_counter()
    feats = {k: trace_features(v) for k, v in vem.items()}
    auc = {f"{k}_vs_data": _auc(feats["data"], feats[k], cfg) for k in ("sim", "refined")}
    diagnostics = classifier_diagnostics(feats)
    diagnostics["refined_auc_without"] = auc_without_each(feats["data"], feats["refined"], cfg)
    timings["classifier_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    paths = (sim_path, data_path, refiner_run)
    summary = _summary(model, s, cfg, perf, auc, vem, timings, paths)
    summary["classifier_diagnostics"] = diagnostics
    truths = {k: _truth(k, energy) for k in preds}
    history = _history(Path(refiner_run))
    figures = study_figures(perf, preds, truths, vem, s["matched"], history)
    return write_study_report(out_dir, summary, figures, overwrite)


def _summary(
    model: RefinerModel,
    s: dict[str, Any],
    cfg: RefineStudyConfig,
    perf: dict[str, Any],
    auc: dict[str, Any],
    vem: dict[str, np.ndarray],
    timings: dict[str, float],
    paths: tuple[Any, Any, Any],
) -> dict[str, Any]:
    """summary.json: inputs, settings, performance, AUCs, headline ratios, environment."""
    sim_bias, ref_bias = (
        perf["sim_on_data"]["mean_abs_bias"],
        perf["refined_on_data"]["mean_abs_bias"],
    )
    return {
        "inputs": {
            "sim": str(paths[0]),
            "data": str(paths[1]),
            "refiner_run": str(paths[2]),
            "refiner_step": model.step,
            "ranges": s["ranges"],
            "matched_test_events": s["matched"],
        },
        "settings": json.loads(cfg.to_json()),
        "refiner_config": json.loads(model.setup.to_json()),
        "performance": perf,
        "auc": auc,
        "bias_reduction": 1.0 - ref_bias / sim_bias if sim_bias > 0 else float("nan"),
        "resolution_ratio": (
            perf["refined_on_data"]["mean_resolution"] / perf["sim_on_data"]["mean_resolution"]
        ),
        "hottest_station_ratio_to_data": {
            k: _matched_brightness(vem[k], vem["data"]) for k in ("sim", "refined")
        },
        "multiplicity": {k: _multiplicity(v) for k, v in vem.items()},
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "environment": {
            "detgan": __version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(model.device),
        },
    }
