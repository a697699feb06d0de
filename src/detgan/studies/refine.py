"""Refining simulated traces to match data, and the energy-reconstruction study that proves it.

``paper_methods.md`` §3 [E18 §2.4, §5, arXiv:1802.03325; SimGAN, arXiv:1612.07828]: a refiner
ψ trained adversarially (WGAN-GP [GP17, arXiv:1704.00028]) maps air-shower 'sim' traces to
'data'-like traces event by event, so the simulated labels are kept. An AixNet-like energy
regressor [EGW18] trained on refined simulation then reconstructs 'data' with a smaller bias
than one trained on the original simulation.

Functions for scripts and the CLI::

    train_refiner(setup, sim_path, data_path, run_dir, *, device="cpu", resume=False, ...)
    load_refiner(run_dir, device="cpu") -> RefinerModel   (.refine(traces) in VEM)
    refine_file(run_dir, sim_path, out, *, chunk_size=1000, device="cpu", overwrite=False)
    run_refine_study(sim_path, data_path, refiner_run, out_dir, *, config=None, ...)

The study trains the regressor on 'sim', refined 'sim' and 'data' (training parts of the files),
evaluates all three on held-out 'data' (and 'sim'-trained on held-out 'sim', the paper's
benchmark) and writes bias and resolution per energy bin, scatter plots, Fig. 5 (a matched
event), Fig. 7 (critic loss) and classifier two-sample AUCs to ``summary.json`` and a page.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detgan import __version__, losses
from detgan.config import Config, ConfigGroup, pick_preset, require
from detgan.io.native import H5Writer, iter_chunks, open_h5, read_arrays, read_attrs
from detgan.models.refiner import RefinerModelConfig, build_refiner_models
from detgan.train import (
    HISTORY_NAME,
    AdversarialProblem,
    TrainConfig,
    Trainer,
    load_checkpoint,
    load_run,
    prepare_run_dir,
)
from detgan.transforms import Log
from detgan.utils import resolve_device

__all__ = [
    "RefineDataConfig",
    "RefineSetup",
    "REFINE_PRESETS",
    "refine_preset",
    "to_net",
    "from_net",
    "split_index",
    "load_traces",
    "refiner_problem",
    "train_refiner",
    "RefinerModel",
    "load_refiner",
    "refine_arrays",
    "refine_file",
    "RefineStudyConfig",
    "STUDY_PRESETS",
    "train_regressor",
    "predict_energy",
    "energy_performance",
    "trace_features",
    "run_refine_study",
    "render_study_markdown",
]

DATA_THRESHOLD = 115.2  # 'data' trigger threshold in VEM (airshower.md §13), fallback only
_LOG = Log(offset=1.0, base=10.0)


def to_net(traces: Any) -> Tensor:
    """Traces in VEM (…, T) → network units u = log10(1 + s) as float32 tensor."""
    x = torch.as_tensor(np.asarray(traces, dtype=np.float32))
    return _LOG.forward(x.clamp(min=0.0)).float()


def from_net(u: Tensor) -> np.ndarray:
    """Network units → traces in VEM, float32 numpy (exact zeros stay zeros)."""
    return _LOG.inverse(u.detach().float().cpu()).clamp(min=0.0).numpy().astype(np.float32)


@dataclasses.dataclass(frozen=True)
class RefineDataConfig(Config):
    """Problem settings of the refiner training.

    ``self_regularisation`` w: the generator also minimises w · E[mean_features |ψ(u) − u|]
    (SimGAN's L1 term, per feature in network units; the paper uses none: default 0).
    ``holdout``: the last fraction of both files is never used for training (the study
    evaluates on it). ``max_events`` caps the training events per file (0: all).
    ``threshold``: trigger threshold of the gate in VEM (0: the data file's
    ``trigger_threshold``).
    """

    self_regularisation: float = 0.0
    holdout: float = 0.25
    max_events: int = 0
    threshold: float = 0.0

    def validate(self) -> None:
        require(self.self_regularisation >= 0, "self_regularisation must be >= 0")
        require(0.0 <= self.holdout < 1.0, "holdout must lie in [0, 1)")
        require(self.max_events >= 0, "max_events must be >= 0 (0: all events)")
        require(self.threshold >= 0, "threshold must be >= 0 (0: from the data file)")


@dataclasses.dataclass(frozen=True)
class RefineSetup(ConfigGroup):
    """The three configs of a refiner run; ``with_overrides`` routes names to their config."""

    model: RefinerModelConfig
    train: TrainConfig
    data: RefineDataConfig


def _paper() -> RefineSetup:
    """Table 3 and §3 as published: 10⁴ iterations, batch 100, n_critic 10, λ 5, Adam 1e-4."""
    train = TrainConfig(
        iterations=10000,
        n_critic=10,
        batch_size=100,
        gp_weight=5.0,
        lr_generator=1e-4,
        lr_critic=1e-4,
        beta1=0.5,
        beta2=0.999,
        decay_generator=0.0,
        decay_critic=0.0,
        checkpoint_every=500,
    )
    return RefineSetup(RefinerModelConfig(), train, RefineDataConfig())


def _ours(
    channels: int,
    blocks: int,
    iterations: int,
    batch: int,
    n_critic: int,
    self_reg: float,
    max_events: int,
    every: int,
) -> RefineSetup:
    """Our CPU design: identity skip, station mask and trigger gate, amplitude-aware critic;
    a decaying refiner learning rate and an average of its weights (EMA) damp the oscillation
    of the hottest station's brightness seen with a constant 2e-4 and the raw weights."""
    model = RefinerModelConfig(
        channels=channels,
        blocks=blocks,
        input_skip=True,
        station_mask=True,
        trigger_gate=True,
        critic_width=32,
    )
    train = TrainConfig(
        iterations=iterations,
        n_critic=n_critic,
        batch_size=batch,
        gp_weight=5.0,
        lr_generator=2e-4,
        lr_critic=2e-4,
        beta1=0.5,
        beta2=0.9,
        decay_generator=1e-3,
        decay_critic=0.0,
        ema_decay=0.995,
        checkpoint_every=every,
    )
    return RefineSetup(
        model, train, RefineDataConfig(self_regularisation=self_reg, max_events=max_events)
    )


#: Named presets: the paper's setup (GPU) and our CPU designs.
REFINE_PRESETS: dict[str, RefineSetup] = {
    "paper": _paper(),
    "full": _ours(32, 4, 3000, 64, 5, 0.05, 0, 250),
    "quick": _ours(16, 2, 1600, 32, 5, 0.05, 8000, 200),
}


def refine_preset(name: str) -> RefineSetup:
    """The named preset (``paper``, ``full``, ``quick``)."""
    return pick_preset(REFINE_PRESETS, name, "refiner preset")


# --------------------------------------------------------------------------------- data
def split_index(n: int, holdout: float) -> int:
    """Index of the first held-out event: events [0, k) train, [k, n) are held out."""
    k = int(math.floor(n * (1.0 - holdout)))
    require(0 < k <= n, f"a file with {n} events leaves nothing to train on with holdout {holdout}")
    return k


def load_traces(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> Tensor:
    """Traces of events [start, stop) of a native file → network units (N, 9, 9, 80)."""
    return to_net(read_arrays(path, ["traces"], start=start, stop=stop)["traces"])


def _file_threshold(path: str | os.PathLike) -> float:
    theta = read_attrs(path).get("trigger_threshold")
    return float(theta) if isinstance(theta, (int, float)) and theta > 0 else DATA_THRESHOLD


def _n_events(path: str | os.PathLike) -> int:
    with open_h5(path) as f:
        require(
            "traces" in f,
            f"file '{path}' has no 'traces'; simulate it with detgan simulate airshower",
        )
        return int(f["traces"].shape[0])


def refiner_problem(
    sim: Tensor, data: Tensor, self_regularisation: float = 0.0
) -> AdversarialProblem:
    """Real batches of 'data' with a 'source' batch of 'sim' drawn alongside (with replacement);
    fakes are ψ(source); the critic is unconditional; optional SimGAN self-regularisation."""

    def sample_real(n: int, rng: torch.Generator) -> dict[str, Tensor]:
        i = torch.randint(len(data), (n,), generator=rng).to(data.device)
        j = torch.randint(len(sim), (n,), generator=rng).to(sim.device)
        return {"x": data[i], "source": sim[j]}

    def sample_fake(refiner: nn.Module, batch: dict[str, Tensor], rng: torch.Generator):
        return refiner(batch["source"]), None

    extra = None
    if self_regularisation > 0:

        def extra(fake: Tensor, batch: dict[str, Tensor]) -> Tensor:
            d = fake[0].numel()  # per-feature mean: weight independent of the trace size
            return losses.self_regularisation(fake, batch["source"], self_regularisation / d)

    return AdversarialProblem(sample_real, sample_fake, lambda c, u, _y: c(u), extra)


# ------------------------------------------------------------------------------ training
def _training_samples(
    setup: RefineSetup, sim_path: str | os.PathLike, data_path: str | os.PathLike
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The training parts of both files in network units and their bookkeeping."""
    d = setup.data
    n_sim, n_data = _n_events(sim_path), _n_events(data_path)
    k_sim, k_data = split_index(n_sim, d.holdout), split_index(n_data, d.holdout)
    if d.max_events:
        k_sim, k_data = min(k_sim, d.max_events), min(k_data, d.max_events)
    info = {
        "n_sim": n_sim,
        "n_data": n_data,
        "n_sim_train": k_sim,
        "n_data_train": k_data,
        "holdout_sim_start": split_index(n_sim, d.holdout),
        "holdout_data_start": split_index(n_data, d.holdout),
        "sim_path": str(sim_path),
        "data_path": str(data_path),
    }
    return load_traces(sim_path, 0, k_sim), load_traces(data_path, 0, k_data), info


def train_refiner(
    setup: RefineSetup,
    sim_path: str | os.PathLike,
    data_path: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    until: int | None = None,
    iterations: int | None = None,
) -> Path:
    """Train the refiner on 'sim' → 'data' traces (native files with ``traces``).

    Writes ``RUN/checkpoint.pt`` (every ``checkpoint_every`` iterations and at the end),
    ``RUN/history.jsonl`` (C1, C2, generator loss, self-regularisation per iteration) and
    ``RUN/config.json``. With ``resume`` the run continues exactly from its checkpoint (its
    stored configuration wins over ``setup``, except ``iterations``, which extends a run).
    ``until`` stops early at that iteration.
    """
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume, overwrite)
    dev = resolve_device(device)
    state = load_checkpoint(run_dir) if resume else None
    if state is not None:
        setup = RefineSetup.from_json(state["config_json"])
    if iterations is not None:
        setup = dataclasses.replace(setup, train=setup.train.replace(iterations=iterations))
    sim, data, info = _training_samples(setup, sim_path, data_path)
    if state is not None:
        old = state["extra"]
        require(
            info["n_sim_train"] == old["n_sim_train"]
            and info["n_data_train"] == old["n_data_train"],
            "the files differ from those the run was trained on; resume with the same files",
        )
        threshold = float(old["threshold"])
    else:
        threshold = setup.data.threshold or _file_threshold(data_path)
    with torch.random.fork_rng(devices=[]):  # weight initialisation from the run's seed only
        torch.manual_seed(setup.train.seed)
        models = build_refiner_models(setup.model, threshold, sim.shape[-1])
    models = {k: m.to(dev) for k, m in models.items()}
    extra = {
        **info,
        "threshold": threshold,
        "package_version": __version__,
        "transform": _LOG.state_dict(),
    }
    problem = refiner_problem(sim.to(dev), data.to(dev), setup.data.self_regularisation)
    trainer = Trainer(
        models,
        problem,
        setup.train,
        run_dir,
        config_json=setup.to_json(),
        extra=extra,
        progress=progress,
    )
    if state is not None:
        trainer.resume()
    else:
        (run_dir / "config.json").write_text(json.dumps(json.loads(setup.to_json()), indent=2))
    trainer.run(until=until)
    return run_dir


# ------------------------------------------------------------------------------ refining
@dataclasses.dataclass
class RefinerModel:
    """A trained refiner ready to use: network (eval mode), configuration, checkpoint extra."""

    refiner: nn.Module
    setup: RefineSetup
    step: int
    extra: dict[str, Any]
    device: torch.device

    @property
    def threshold(self) -> float:
        return float(self.extra["threshold"])

    def refine_net(self, u: Tensor, batch_size: int = 256) -> Tensor:
        """Network units (N, 9, 9, T) → refined network units (N, 9, 9, T), CPU float32."""
        out = []
        with torch.no_grad():
            for start in range(0, len(u), batch_size):
                out.append(
                    self.refiner(u[start : start + batch_size].to(self.device)).float().cpu()
                )
        return torch.cat(out) if out else u.clone()

    def refine(self, traces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Traces in VEM (N, 9, 9, T) → refined traces in VEM (N, 9, 9, T) float32."""
        return from_net(self.refine_net(to_net(traces), batch_size))


def load_refiner(run_dir: str | os.PathLike, device: str = "cpu") -> RefinerModel:
    """Rebuild the refiner of a run from ``RUN/checkpoint.pt`` (loaded with weights_only)."""
    dev = resolve_device(device)
    state, setup = load_run(run_dir, RefineSetup, "refiner", extra_keys=("threshold",))
    extra = state["extra"]
    threshold = float(extra["threshold"])
    models = build_refiner_models(setup.model, threshold)
    weights = state["models"]  # the moving average of the weights when it was kept
    models["generator"].load_state_dict(weights.get("generator_ema", weights["generator"]))
    return RefinerModel(models["generator"].to(dev).eval(), setup, int(state["step"]), extra, dev)


def refine_arrays(model: RefinerModel, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replace ``traces`` by refined traces and recompute what derives from them.

    ``footprint`` = log10(S + 1) of the refined station integral S, ``triggered`` = S > 0
    (stations switched off by the refiner read 0), ``arrival_time`` is 0 where untriggered
    (``airshower.md`` §16.2); every other dataset is returned unchanged.
    """
    out = dict(arrays)
    dtype = arrays["traces"].dtype
    refined = model.refine(arrays["traces"])
    signal = refined.astype(np.float64).sum(-1)
    triggered = signal > 0
    if "footprint" in arrays:
        out["footprint"] = np.where(triggered, np.log10(signal + 1.0), 0.0).astype(
            arrays["footprint"].dtype
        )
    if "triggered" in arrays:
        out["triggered"] = triggered
    if "arrival_time" in arrays:
        out["arrival_time"] = np.where(triggered, arrays["arrival_time"], 0).astype(
            arrays["arrival_time"].dtype
        )
    if dtype == np.float16:
        refined = np.minimum(refined, np.finfo(np.float16).max)
    out["traces"] = refined.astype(dtype)
    return out


def refine_file(
    run_dir: str | os.PathLike,
    sim_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    chunk_size: int = 1000,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Refine every event of ``sim_path`` into ``out``, streamed in chunks of ``chunk_size``.

    All datasets and attributes of the input are kept (see :func:`refine_arrays`); the
    attributes gain ``refined`` = 1, ``refiner_run``, ``refiner_step``,
    ``refiner_config_json`` and ``trigger_threshold`` becomes the gate threshold if gated.
    """
    model = load_refiner(run_dir, device)
    with open_h5(sim_path) as f:
        require("traces" in f, f"file '{sim_path}' has no 'traces'; refine an air-shower file")
        names = [k for k in f if hasattr(f[k], "shape") and f[k].shape[:1] == f["traces"].shape[:1]]
        specs = {k: (tuple(f[k].shape[1:]), f[k].dtype) for k in names}
        n = int(f["traces"].shape[0])
    attrs = {k: v for k, v in read_attrs(sim_path).items() if k != "package_version"}
    attrs.update(
        refined=1,
        refiner_run=str(run_dir),
        refiner_step=model.step,
        refiner_config_json=model.setup.to_json(),
    )
    if model.setup.model.trigger_gate:
        attrs["trigger_threshold"] = model.threshold
    bar = _bar(progress, n)
    with H5Writer(out, n, specs, attrs, overwrite=overwrite) as writer:
        for start, arrays in iter_chunks(sim_path, names, chunk_size, schema={}):
            writer.write(start, refine_arrays(model, arrays))
            if bar is not None:
                bar.update(len(arrays["traces"]))
    if bar is not None:
        bar.close()
    return Path(out)


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ev", desc="refining", dynamic_ncols=True)


# ------------------------------------------------------------------------------ the study
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
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(perm), config.batch_size):
            idx = perm[i : i + config.batch_size]
            loss = losses.regression_loss(yt[idx].to(dev), model(xt[idx].to(dev)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = float(np.mean((_predict(model, xv, dev) - yv.numpy()) ** 2))
        if val < best:
            best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), stats


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
    bins = []
    for b in range(len(edges) - 1):
        rb = r[which == b]
        n = len(rb)
        sd = float(rb.std(ddof=1)) if n > 1 else float("nan")
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": n,
                "bias": float(rb.mean()) if n else float("nan"),
                "bias_err": sd / math.sqrt(n) if n > 1 else float("nan"),
                "resolution": sd,
                "resolution_err": sd / math.sqrt(2 * (n - 1)) if n > 1 else float("nan"),
            }
        )
    filled = [b for b in bins if b["n"] > 1]
    return {
        "bins": bins,
        "mean_abs_bias": float(np.mean([abs(b["bias"]) for b in filled])),
        "mean_resolution": float(np.mean([b["resolution"] for b in filled])),
        "bias_all": float(r.mean()),
        "resolution_all": float(r.std(ddof=1)),
    }


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
    reference: np.ndarray, candidate: np.ndarray, config: RefineStudyConfig
) -> dict[str, float]:
    from detgan.metrics import classifier_two_sample_test
    from detgan.observables import feature_matrix

    ref_f, cand_f = trace_features(reference), trace_features(candidate)
    xr, _ = feature_matrix(ref_f, reference=ref_f)
    xc, _ = feature_matrix(cand_f, names=list(ref_f), reference=ref_f)
    if xc.shape[1] != xr.shape[1]:  # an undefined-feature indicator only one sample needs
        names = [k for k in ref_f if not (np.isnan(ref_f[k]).any() or np.isnan(cand_f[k]).any())]
        xr, _ = feature_matrix(ref_f, names, ref_f)
        xc, _ = feature_matrix(cand_f, names, ref_f)
    res = classifier_two_sample_test(xr, xc, seed=config.seed, n_runs=config.classifier_runs)
    return {"auc": res.auc, "auc_std": res.auc_std}


def _matched_brightness(candidate: np.ndarray, data: np.ndarray) -> dict[str, float]:
    """Matched events: ratio of the hottest-station integral, candidate / data (median, 16–84 %)."""
    c = candidate.astype(np.float64).sum(-1).reshape(len(candidate), -1).max(1)
    d = data.astype(np.float64).sum(-1).reshape(len(data), -1).max(1)
    ok = d > 0
    q16, q50, q84 = np.percentile(c[ok] / d[ok], [16, 50, 84])
    return {"median": float(q50), "q16": float(q16), "q84": float(q84)}


def _multiplicity(traces: np.ndarray) -> float:
    return float((traces.max(-1) > 0).sum((1, 2)).mean())


def _study_samples(
    model: RefinerModel, sim_path: Any, data_path: Any, cfg: RefineStudyConfig
) -> dict[str, Any]:
    """Training parts (first events) and held-out parts (after the refiner's holdout start)."""
    n_sim, n_data = _n_events(sim_path), _n_events(data_path)
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
    import time

    cfg = config or RefineStudyConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_refiner(refiner_run, device)
    s = _study_samples(model, sim_path, data_path, cfg)
    net = {k: to_net(s[k]["traces"]) for k in ("sim_train", "data_train", "sim_test", "data_test")}
    net["refined_train"] = model.refine_net(net["sim_train"])
    net["refined_test"] = model.refine_net(net["sim_test"])
    timings["load_and_refine_s"] = time.perf_counter() - t0
    log(
        f"loaded {len(net['sim_train'])} training and {len(net['data_test'])} held-out events; "
        f"refined in {timings['load_and_refine_s']:.0f} s"
    )
    energy = {k: s[k]["energy"] for k in ("sim_train", "data_train", "sim_test", "data_test")}
    energy["refined_train"] = energy["sim_train"]
    preds, perf = {}, {}
    for name in ("sim", "refined", "data"):
        t = time.perf_counter()
        reg, stats = train_regressor(
            net[f"{name}_train"], energy[f"{name}_train"], cfg, device=model.device
        )
        preds[f"{name}_on_data"] = predict_energy(reg, stats, net["data_test"])
        if name == "sim":
            preds["sim_on_sim"] = predict_energy(reg, stats, net["sim_test"])
        timings[f"regressor_{name}_s"] = time.perf_counter() - t
        log(f"regressor trained on {name} in {timings[f'regressor_{name}_s']:.0f} s")
    for key, pred in preds.items():
        truth = energy["sim_test"] if key == "sim_on_sim" else energy["data_test"]
        perf[key] = energy_performance(truth, pred, cfg.energy_edges)
    vem = {k: from_net(net[f"{k}_test"]) for k in ("sim", "refined", "data")}
    t = time.perf_counter()
    auc = {
        "sim_vs_data": _auc(vem["data"], vem["sim"], cfg),
        "refined_vs_data": _auc(vem["data"], vem["refined"], cfg),
    }
    timings["classifier_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    summary = _summary(model, s, cfg, perf, auc, vem, timings, sim_path, data_path, refiner_run)
    figures = _figures(perf, preds, energy, vem, s["matched"], _history(Path(refiner_run)), cfg)
    return _write_study(Path(out_dir), summary, figures, overwrite)


def _summary(model, s, cfg, perf, auc, vem, timings, sim_path, data_path, refiner_run) -> dict:
    sim_bias, ref_bias = (
        perf["sim_on_data"]["mean_abs_bias"],
        perf["refined_on_data"]["mean_abs_bias"],
    )
    return {
        "inputs": {
            "sim": str(sim_path),
            "data": str(data_path),
            "refiner_run": str(refiner_run),
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


# ------------------------------------------------------------------------------ figures
_LABELS = {
    "sim_on_data": "trained on sim",
    "refined_on_data": "trained on refined sim",
    "data_on_data": "trained on data",
    "sim_on_sim": "sim on sim (benchmark)",
}
_COLOURS = {
    "sim_on_data": "#c0392b",
    "refined_on_data": "#2471a3",
    "data_on_data": "0.3",
    "sim_on_sim": "#7d9c3a",
    "sim": "#c0392b",
    "refined": "#2471a3",
    "data": "0.3",
}


def _fig_bias(perf: dict[str, Any]):
    """Bias and resolution per energy bin for every regressor (paper Fig. 6)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for key, p in perf.items():
        centre = [(b["low"] + b["high"]) / 2 for b in p["bins"]]
        for ax, q in zip(axes, ("bias", "resolution")):
            ax.errorbar(
                centre,
                [b[q] for b in p["bins"]],
                [b[f"{q}_err"] for b in p["bins"]],
                marker="o",
                ms=3,
                capsize=2,
                color=_COLOURS[key],
                label=_LABELS[key],
                ls="--" if key == "sim_on_sim" else "-",
            )
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set(xlabel="E_true / EeV", ylabel="bias ⟨(E_rec − E_true)/E_true⟩")
    axes[1].set(
        xlabel="E_true / EeV", ylabel="resolution σ((E_rec − E_true)/E_true)", ylim=(0, None)
    )
    axes[0].legend(fontsize=7)
    return fig


def _fig_scatter(preds: dict[str, np.ndarray], energy: dict[str, np.ndarray]):
    """E_rec against E_true for every regressor."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.2), layout="constrained")
    for ax, (key, pred) in zip(fig.subplots(1, len(preds)), preds.items()):
        truth = energy["sim_test"] if key == "sim_on_sim" else energy["data_test"]
        ax.scatter(truth, pred, s=2, alpha=0.3, color=_COLOURS[key], rasterized=True)
        ax.plot([1, 100], [1, 100], color="k", lw=0.8)
        ax.set(
            xlabel="E_true / EeV",
            ylabel="E_rec / EeV",
            title=_LABELS[key],
            xlim=(0, 105),
            ylim=(0, 140),
        )
    return fig


def _matched_event(vem: dict[str, np.ndarray]) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """A held-out event near the median energy range: its index, hottest station (from data)
    and the brightest of its direct neighbours."""
    signal = vem["data"].sum(-1)
    total = signal.sum((1, 2))
    idx = int(np.argsort(total)[len(total) // 2])
    i, j = np.unravel_index(int(signal[idx].argmax()), signal[idx].shape)
    cand = [
        (i + di, j + dj)
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, 1), (1, -1))
        if 0 <= i + di < signal.shape[1] and 0 <= j + dj < signal.shape[2]
    ]
    nb = max(cand, key=lambda c: signal[idx][c])
    return idx, (int(i), int(j)), (int(nb[0]), int(nb[1]))


def _fig_traces(vem: dict[str, np.ndarray], matched: bool):
    """Paper Fig. 5: data, sim and refined traces of one matched event's hottest station and
    a neighbour."""
    from matplotlib.figure import Figure

    idx, hot, nb = _matched_event(vem)
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    for ax, (i, j), what in zip(fig.subplots(1, 2), (hot, nb), ("hottest station", "neighbour")):
        for k in ("data", "sim", "refined"):
            ax.step(
                np.arange(vem[k].shape[-1]) * 25.0,
                vem[k][idx, i, j],
                where="post",
                color=_COLOURS[k],
                label=k,
                lw=1.2 if k != "data" else 1.8,
            )
        ax.set(
            xlabel="t / ns",
            ylabel="signal / VEM per 25 ns",
            yscale="symlog",
            title=f"{what} ({i}, {j})" + ("" if matched else " — events not matched"),
        )
        ax.legend(fontsize=7)
    return fig


def _fig_critic(history: dict[str, list[float]]):
    """Paper Fig. 7: critic loss −C1 + C2 during refiner training (raw and running mean)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.subplots()
    step = np.asarray(history["step"])
    loss = -np.asarray(history["C1"]) + np.asarray(history["C2"])
    if len(step):
        w = max(1, len(step) // 50)
        ax.plot(step, loss, color="0.7", lw=0.5, label="−C1 + C2")
        ax.plot(
            step[w - 1 :],
            np.convolve(loss, np.ones(w) / w, "valid"),
            color="#2471a3",
            label=f"running mean ({w})",
        )
        ax.legend(fontsize=7)
    ax.set(xlabel="refiner iteration", ylabel="critic loss")
    return fig


def _figures(perf, preds, energy, vem, matched, history, cfg) -> dict[str, Any]:
    return {
        "bias_resolution": (_fig_bias(perf), "Bias and resolution per energy bin (Fig. 6)"),
        "scatter": (_fig_scatter(preds, energy), "Reconstructed against true energy"),
        "traces": (
            _fig_traces(vem, matched),
            "Fig. 5: one matched event, data / sim / refined traces",
        ),
        "critic_loss": (_fig_critic(history), "Fig. 7: critic loss during refiner training"),
    }


# ------------------------------------------------------------------------------ the report
def _rows(summary: dict[str, Any]) -> list[list[str]]:
    perf = summary["performance"]
    keys = list(perf)
    rows = []
    for bins in zip(*(perf[k]["bins"] for k in keys)):
        cells = [f"{bins[0]['low']:g}–{bins[0]['high']:g}", str(bins[0]["n"])]
        cells += [f"{x['bias']:+.3f} / {x['resolution']:.3f}" for x in bins]
        rows.append(cells)
    rows.append(
        [
            "mean over bins",
            "",
            *[
                f"{abs(perf[k]['mean_abs_bias']):.3f} / {perf[k]['mean_resolution']:.3f}"
                for k in keys
            ],
        ]
    )
    return [["E / EeV", "n (data)", *[_LABELS[k] for k in keys]]] + rows


def render_study_markdown(summary: dict[str, Any]) -> str:
    """The study page in Markdown: headline numbers and the per-bin table."""
    a, h, inp = summary["auc"], summary["hottest_station_ratio_to_data"], summary["inputs"]
    bias = {k: v["mean_abs_bias"] for k, v in summary["performance"].items()}
    auc = {k: f"{v['auc']:.3f} ± {v['auc_std']:.3f}" for k, v in a.items()}
    ratio = {k: f"{v['median']:.2f} [{v['q16']:.2f}, {v['q84']:.2f}]" for k, v in h.items()}
    table = _rows(summary)
    lines = [
        "# Refinement study: energy reconstruction on held-out 'data'",
        "",
        f"Refiner run `{inp['refiner_run']}` (step {inp['refiner_step']}); "
        f"sim `{inp['sim']}`, data `{inp['data']}`.",
        "",
        f"- mean |bias| over bins: sim-trained {bias['sim_on_data']:.3f}, refined-trained "
        f"{bias['refined_on_data']:.3f}, data-trained {bias['data_on_data']:.3f} "
        f"(reduction by refining: {100 * summary['bias_reduction']:.0f} %)",
        f"- mean resolution ratio refined/sim-trained: {summary['resolution_ratio']:.2f}",
        f"- classifier AUC sim vs data {auc['sim_vs_data']}, refined vs data "
        f"{auc['refined_vs_data']}",
        f"- hottest station / data (matched events, median [16 %, 84 %]): sim {ratio['sim']}, "
        f"refined {ratio['refined']}",
        "- stations with signal per event: "
        + ", ".join(f"{k} {v:.1f}" for k, v in summary["multiplicity"].items()),
        f"- times (s): {summary['timings']}",
        "",
        "Bias / resolution of (E_rec − E_true)/E_true per bin of E_true:",
        "",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table[:1]]
    lines += ["|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    return "\n".join(lines) + "\n"


def _write_study(
    out: Path, summary: dict[str, Any], figures: dict[str, Any], overwrite: bool
) -> Path:
    """Write the report folder atomically (temporary folder, then rename)."""
    import base64
    import html
    import shutil

    from detgan.report import to_json

    if out.exists():
        require(overwrite, f"output '{out}' already exists; pass --overwrite to replace it")
        require(
            out.is_dir() and (not any(out.iterdir()) or (out / "summary.json").exists()),
            f"output '{out}' exists and is not a detgan report; choose another folder",
        )
    require(out.parent.is_dir(), f"directory '{out.parent}' of output '{out}' does not exist")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "figures").mkdir(parents=True)
    try:
        md = render_study_markdown(summary)
        (tmp / "summary.json").write_text(json.dumps(to_json(summary), indent=1))
        (tmp / "report.md").write_text(md)
        parts = []
        for name, (fig, caption) in figures.items():
            fig.savefig(tmp / "figures" / f"{name}.png", dpi=90)
            data = base64.b64encode((tmp / "figures" / f"{name}.png").read_bytes()).decode()
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        (tmp / "report.html").write_text(
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>detgan refinement study"
            "</title></head><body style='font-family:sans-serif;max-width:1100px'>"
            f"<pre>{html.escape(md)}</pre>{''.join(parts)}</body></html>"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
