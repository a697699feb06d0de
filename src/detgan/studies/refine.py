"""Refining simulated traces to match data: setup, presets, training and refining files.

``paper_methods.md`` §3 [E18 §2.4, §5, arXiv:1802.03325; SimGAN, arXiv:1612.07828]: a refiner
ψ trained adversarially (WGAN-GP [GP17, arXiv:1704.00028]) maps air-shower 'sim' traces to
'data'-like traces event by event, so the simulated labels are kept.

Functions for scripts and the CLI::

    train_refiner(setup, sim_path, data_path, run_dir, *, device="cpu", resume=False, ...)
    load_refiner(run_dir, device="cpu") -> RefinerModel   (.refine(traces) in VEM)
    refine_file(run_dir, sim_path, out, *, chunk_size=1000, device="cpu", overwrite=False)

The energy-reconstruction study that proves the refiner (``run_refine_study``, the regressor,
``energy_performance``) lives in :mod:`detgan.studies.refine_study`, its figures and page in
:mod:`detgan.studies.refine_report`.
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
    "count_events",
    "load_traces",
    "refiner_problem",
    "train_refiner",
    "RefinerModel",
    "load_refiner",
    "refine_arrays",
    "refine_file",
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
    ``trigger_threshold``). ``integral_regularisation`` w: the generator also minimises
    w · mean over stations with signal in both the sim and the refined event of
    |log10(1 + S_refined) − log10(1 + S_sim)|, S the station's time-integrated signal
    (:func:`detgan.losses.integral_regularisation`; not in the paper, default 0).
    """

    self_regularisation: float = 0.0
    holdout: float = 0.25
    max_events: int = 0
    threshold: float = 0.0
    integral_regularisation: float = 0.0

    def validate(self) -> None:
        require(self.self_regularisation >= 0, "self_regularisation must be >= 0")
        require(self.integral_regularisation >= 0, "integral_regularisation must be >= 0")
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
    **model_options: object,
) -> RefineSetup:
    """Our CPU design: identity skip, station mask and trigger gate, amplitude-aware critic;
    a decaying refiner learning rate and an average of its weights (EMA) damp the oscillation
    of the hottest station's brightness seen with a constant 2e-4 and the raw weights.
    ``model_options`` are further :class:`RefinerModelConfig` fields."""
    model = RefinerModelConfig(
        channels=channels,
        blocks=blocks,
        input_skip=True,
        station_mask=True,
        trigger_gate=True,
        critic_width=32,
        **model_options,
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
    # ``full`` began as ``quick``'s design trained 3× longer on all events: the first ``full``
    # (32 maps, 4 blocks, batch 64, 3 000 iterations) measured 2.6 s/iteration on one idle
    # core, 2 h 10 min in all, and was never finished; the moving average in ``quick`` was
    # still improving when it stopped. Since session 11 its refiner also sees each station's
    # level and neighbourhood (``level_inputs="context"``): refined-vs-data AUC 0.960 → 0.835
    # with the bias and resolution bars still met (results.md). Since session 12 it has 32 maps
    # (the refined hottest-station peak time reaches data's spread): AUC 0.744, bias −88 %,
    # resolution ratio 0.81, 67 min of training. ``quick`` is unmeasured with either.
    "full": _ours(32, 2, 5000, 32, 5, 0.05, 0, 250, refiner_levels=True, level_inputs="context"),
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


def count_events(path: str | os.PathLike) -> int:
    """Number of events of a native file with ``traces``."""
    with open_h5(path) as f:
        require(
            "traces" in f,
            f"file '{path}' has no 'traces'; simulate it with detgan simulate airshower",
        )
        return int(f["traces"].shape[0])


def refiner_problem(
    sim: Tensor,
    data: Tensor,
    self_regularisation: float = 0.0,
    integral_regularisation: float = 0.0,
) -> AdversarialProblem:
    """Real batches of 'data' with a 'source' batch of 'sim' drawn alongside (with replacement);
    fakes are ψ(source); the critic is unconditional; optional SimGAN self-regularisation and
    station-integral tie."""

    def sample_real(n: int, rng: torch.Generator) -> dict[str, Tensor]:
        i = torch.randint(len(data), (n,), generator=rng).to(data.device)
        j = torch.randint(len(sim), (n,), generator=rng).to(sim.device)
        return {"x": data[i], "source": sim[j]}

    def sample_fake(refiner: nn.Module, batch: dict[str, Tensor], rng: torch.Generator):
        return refiner(batch["source"]), None

    extra = None
    if self_regularisation > 0 or integral_regularisation > 0:

        def extra(fake: Tensor, batch: dict[str, Tensor]) -> Tensor:
            d = fake[0].numel()  # per-feature mean: weight independent of the trace size
            src = batch["source"]
            tie = losses.integral_regularisation(fake, src, integral_regularisation)
            return losses.self_regularisation(fake, src, self_regularisation / d) + tie

    return AdversarialProblem(sample_real, sample_fake, lambda c, u, _y: c(u), extra)


# ------------------------------------------------------------------------------ training
def _training_samples(
    setup: RefineSetup, sim_path: str | os.PathLike, data_path: str | os.PathLike
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The training parts of both files in network units and their bookkeeping."""
    d = setup.data
    n_sim, n_data = count_events(sim_path), count_events(data_path)
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


def _gate_threshold(
    setup: RefineSetup,
    state: dict[str, Any] | None,
    info: dict[str, Any],
    data_path: str | os.PathLike,
) -> float:
    """The trigger-gate threshold: a resumed run's own (after checking it sees the same
    training events), else the setting or the data file's."""
    if state is None:
        return setup.data.threshold or _file_threshold(data_path)
    old = state["extra"]
    require(
        info["n_sim_train"] == old["n_sim_train"] and info["n_data_train"] == old["n_data_train"],
        "the files differ from those the run was trained on; resume with the same files",
    )
    return float(old["threshold"])


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
    threshold = _gate_threshold(setup, state, info, data_path)
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
    d = setup.data
    problem = refiner_problem(
        sim.to(dev), data.to(dev), d.self_regularisation, d.integral_regularisation
    )
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
    names, specs, n = _event_datasets(sim_path)
    attrs = _refined_attrs(model, run_dir, sim_path)
    bar = _bar(progress, n)
    with H5Writer(out, n, specs, attrs, overwrite=overwrite) as writer:
        for start, arrays in iter_chunks(sim_path, names, chunk_size, schema={}):
            writer.write(start, refine_arrays(model, arrays))
            if bar is not None:
                bar.update(len(arrays["traces"]))
    if bar is not None:
        bar.close()
    return Path(out)


def _event_datasets(
    path: str | os.PathLike,
) -> tuple[list[str], dict[str, tuple[tuple[int, ...], Any]], int]:
    """The per-event datasets of an air-shower file: names, (shape, dtype) specs, events."""
    with open_h5(path) as f:
        require("traces" in f, f"file '{path}' has no 'traces'; refine an air-shower file")
        names = [k for k in f if hasattr(f[k], "shape") and f[k].shape[:1] == f["traces"].shape[:1]]
        specs = {k: (tuple(f[k].shape[1:]), f[k].dtype) for k in names}
        return names, specs, int(f["traces"].shape[0])


def _refined_attrs(
    model: RefinerModel, run_dir: str | os.PathLike, sim_path: str | os.PathLike
) -> dict[str, Any]:
    """The input's attributes plus the refiner's provenance (and gate threshold if gated)."""
    attrs = {k: v for k, v in read_attrs(sim_path).items() if k != "package_version"}
    attrs.update(
        refined=1,
        refiner_run=str(run_dir),
        refiner_step=model.step,
        refiner_config_json=model.setup.to_json(),
    )
    if model.setup.model.trigger_gate:
        attrs["trigger_threshold"] = model.threshold
    return attrs


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ev", desc="refining", dynamic_ncols=True)
