"""The adversarial trainer: named steps, schedules, checkpoints, exact resume and history.

A problem (footprints, trace refinement, calorimeter showers) is described by an
:class:`AdversarialProblem` — how to draw a real batch, how to make fakes with the generator and
how the critic scores events — plus a dict of models (``generator``, ``critic`` and optionally
``constrainer``). The loop follows ``paper_methods.md`` §1 [E18, arXiv:1802.03325; GP17,
arXiv:1704.00028]: ``n_critic`` times (critic step minimising −C1 + C2, then constrainer step
minimising C4), then one generator step minimising −E[f(x̃)] + C3.

Under torchrun every process runs this loop on its slice of the global batch and the gradients
are averaged before each optimiser step (:mod:`detgan.distributed`); process 0 alone writes the
checkpoint, the history and the progress bar.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detgan import distributed, losses
from detgan.checkpoint import load_checkpoint_safely, save_checkpoint
from detgan.config import Config, require
from detgan.utils import DetganError

__all__ = [
    "TrainConfig",
    "AdversarialProblem",
    "Trainer",
    "keras_decay",
    "load_checkpoint",
    "prepare_run_dir",
    "load_run",
    "CHECKPOINT_NAME",
    "HISTORY_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.jsonl"
CHECKPOINT_FORMAT = 1

Batch = dict[str, Tensor]


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Settings of the adversarial loop (all problems).

    ``iterations`` counts generator updates; each follows ``n_critic`` critic (+ constrainer)
    updates. Learning rates decay in the Keras convention lr/(1 + d·t), t the number of updates
    of that optimiser so far. ``constraint_weight`` is κ (C3), ``gp_weight`` λ (C2).
    ``pretrain_steps`` constrainer updates with Adam(``pretrain_lr``, default betas) run before
    the loop. ``ema_decay`` > 0 keeps an exponential moving average of the generator weights.
    """

    iterations: int = 1000
    n_critic: int = 5
    batch_size: int = 128
    gp_weight: float = 10.0
    constraint_weight: float = 0.01
    lr_generator: float = 5e-4
    lr_critic: float = 5e-4
    lr_constrainer: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.9
    decay_generator: float = 1e-4
    decay_critic: float = 1e-5
    pretrain_steps: int = 0
    pretrain_lr: float = 1e-3
    ema_decay: float = 0.0
    checkpoint_every: int = 500
    seed: int = 0

    def validate(self) -> None:
        require(self.iterations >= 1, "iterations must be at least 1")
        require(self.n_critic >= 1, "n_critic must be at least 1")
        require(self.batch_size >= 2, "batch_size must be at least 2")
        require(
            self.gp_weight >= 0 and self.constraint_weight >= 0,
            "gp_weight and constraint_weight must be non-negative",
        )
        for name in ("lr_generator", "lr_critic", "lr_constrainer", "pretrain_lr"):
            require(getattr(self, name) > 0, f"{name} must be positive")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must lie in [0, 1)")
        require(self.decay_generator >= 0 and self.decay_critic >= 0, "decays must be >= 0")
        require(self.pretrain_steps >= 0, "pretrain_steps must be >= 0")
        require(0 <= self.ema_decay < 1, "ema_decay must lie in [0, 1)")
        require(self.checkpoint_every >= 1, "checkpoint_every must be at least 1")


def keras_decay(lr: float, decay: float, updates: int) -> float:
    """Keras learning-rate decay: lr_t = lr / (1 + d·t) after t updates."""
    return lr / (1.0 + decay * updates)


def _default_critique(critic: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
    return critic(x) if y is None else critic(x, y)


@dataclasses.dataclass
class AdversarialProblem:
    """What the trainer needs to know about one problem.

    ``sample_real(batch_size, rng)`` → batch dict with ``x`` (N, ...) on the training device and,
    for conditional problems, the label ``y`` (N,). ``sample_fake(generator, batch, rng)`` →
    (x̃ (N, ...), label of x̃ or None): a conditional generator uses ``batch['y']``; a refiner
    refines ``batch['source']``. ``critique(critic, x, y)`` → (N,) scores. Random draws use
    ``rng`` (a CPU :class:`torch.Generator`) so that runs are exactly resumable.
    """

    sample_real: Callable[[int, torch.Generator], Batch]
    sample_fake: Callable[[nn.Module, Batch, torch.Generator], tuple[Tensor, Tensor | None]]
    critique: Callable[[nn.Module, Tensor, Tensor | None], Tensor] = _default_critique
    extra_generator_loss: Callable[[Tensor, Batch], Tensor] | None = None


def _adam(params, lr: float, beta1: float, beta2: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2))


def _rng_state(rng: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"sampler": rng.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(rng: torch.Generator, state: Mapping[str, Any]) -> None:
    rng.set_state(state["sampler"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; one-line errors for missing/corrupt files."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise DetganError(f"checkpoint '{path}' not found; is this a training run directory?")
    state = load_checkpoint_safely(path, map_location)  # weights_only + content hash
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DetganError(f"checkpoint '{path}' has an unknown format; retrain or update detgan")
    return state


class Trainer:
    """Runs an adversarial training; every step is a method that can be called alone.

    ``models`` needs ``generator`` and ``critic``; ``constrainer`` is optional. ``extra`` is a
    dict of checkpointable values (tensors, strings, numbers, lists, dicts) that callbacks may
    update, e.g. preprocessing state or fixed-noise snapshots. ``callbacks`` are called as
    ``callback(trainer)`` after each generator iteration, on every process (a callback that
    writes files checks :func:`detgan.distributed.is_main_process`).

    Under torchrun (:mod:`detgan.distributed`) ``config.batch_size`` is the global batch; each
    process computes the rows :attr:`rows` of it.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        problem: AdversarialProblem,
        config: TrainConfig,
        run_dir: str | os.PathLike | None = None,
        *,
        config_json: str = "{}",
        extra: dict[str, Any] | None = None,
        callbacks: Sequence[Callable[[Trainer], None]] = (),
        progress: bool = True,
    ) -> None:
        require(
            "generator" in models and "critic" in models,
            "the trainer needs models named 'generator' and 'critic'",
        )
        distributed.init_from_environment()
        distributed.check_global_batch(config.batch_size)
        self.models = dict(models)
        self.problem, self.cfg = problem, config
        _check_devices(self.models)
        self.rows = distributed.local_rows(config.batch_size)
        self.parallel = distributed.world_size() > 1
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config_json, self.extra = config_json, dict(extra or {})
        self.callbacks, self.progress = list(callbacks), progress
        c = config
        self.optimisers = {
            "generator": _adam(
                self.models["generator"].parameters(), c.lr_generator, c.beta1, c.beta2
            ),
            "critic": _adam(self.models["critic"].parameters(), c.lr_critic, c.beta1, c.beta2),
        }
        if self.has_constrainer:
            self.optimisers["constrainer"] = _adam(
                self.models["constrainer"].parameters(), c.lr_constrainer, c.beta1, c.beta2
            )
        self.updates = {name: 0 for name in self.optimisers}
        self.ema = copy.deepcopy(self.models["generator"]) if c.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.rng = torch.Generator().manual_seed(c.seed)
        self.step, self.pretrained, self.elapsed = 0, False, 0.0

    @property
    def has_constrainer(self) -> bool:
        return "constrainer" in self.models

    @property
    def sampling_generator(self) -> nn.Module:
        """The generator to sample from: the EMA copy when enabled, else the trained one."""
        return self.ema if self.ema is not None else self.models["generator"]

    # --- named steps -------------------------------------------------------------------
    def _update(self, name: str, loss: Tensor, decay: float, base_lr: float) -> None:
        opt = self.optimisers[name]
        for group in opt.param_groups:
            group["lr"] = keras_decay(base_lr, decay, self.updates[name])
        _descend(opt, loss)
        self.updates[name] += 1

    def _local(self, value: Any) -> Any:
        """This process's rows of a global-batch tensor or batch dict (all rows: one process)."""
        if not self.parallel or value is None:
            return value
        if isinstance(value, Mapping):
            return {k: v[self.rows] for k, v in value.items()}
        return value[self.rows]

    def _fake(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Fakes for the global ``batch`` (noise drawn for all of it), this process's rows."""
        gen = self.models["generator"]
        if self.parallel:
            gen = distributed.LocalRows(gen, self.rows)
        fake, y_fake = self.problem.sample_fake(gen, batch, self.rng)
        return self._local(fake), self._local(y_fake)

    def critic_step(self) -> tuple[dict[str, float], Batch]:
        """One critic update minimising −C1 + C2 (generator frozen); returns the terms and
        the real batch (this process's rows)."""
        cfg, critic = self.cfg, self.models["critic"]
        real = self.problem.sample_real(cfg.batch_size, self.rng)
        with torch.no_grad():
            fake, y_fake = self._fake(real)
        # ε of the penalty, drawn for the global batch (the draw gradient_penalty would make)
        eps = torch.rand(cfg.batch_size, generator=self.rng, dtype=real["x"].dtype)
        real, eps = self._local(real), self._local(eps)
        y_real = real.get("y")
        c1 = losses.wasserstein_estimate(
            self.problem.critique(critic, real["x"], y_real),
            self.problem.critique(critic, fake, y_fake),
        )
        c2 = losses.gradient_penalty(
            lambda u: self.problem.critique(critic, u, y_real),
            real["x"],
            fake,
            cfg.gp_weight,
            epsilon=eps,
        )
        self._update("critic", losses.critic_loss(c1, c2), cfg.decay_critic, cfg.lr_critic)
        return {"C1": c1.item(), "C2": c2.item()}, real

    def constrainer_step(self, real: Batch, *, lr: float | None = None) -> dict[str, float]:
        """One constrainer update minimising C4 = E[(y − a(x))²] on the real batch."""
        c4 = losses.regression_loss(real["y"], self.models["constrainer"](real["x"]))
        base = self.cfg.lr_constrainer if lr is None else lr
        self._update("constrainer", c4, self.cfg.decay_critic if lr is None else 0.0, base)
        return {"C4": c4.item()}

    def generator_step(self) -> dict[str, float]:
        """One generator update minimising −E[f(x̃)] + C3 (critic and constrainer frozen)."""
        cfg = self.cfg
        frozen = [self.models["critic"]] + (
            [self.models["constrainer"]] if self.has_constrainer else []
        )
        for m in frozen:
            m.requires_grad_(False)
        try:
            batch = self.problem.sample_real(cfg.batch_size, self.rng)
            fake, y_fake = self._fake(batch)
            batch = self._local(batch)
            adv = losses.generator_adversarial_loss(
                self.problem.critique(self.models["critic"], fake, y_fake)
            )
            loss, out = adv, {"generator": adv.item()}
            if self.has_constrainer and y_fake is not None:
                c3 = losses.constraint_loss(
                    y_fake, self.models["constrainer"](fake), cfg.constraint_weight
                )
                loss, out["C3"] = loss + c3, c3.item()
            if self.problem.extra_generator_loss is not None:
                reg = self.problem.extra_generator_loss(fake, batch)
                loss, out["regularisation"] = loss + reg, reg.item()
            self._update("generator", loss, cfg.decay_generator, cfg.lr_generator)
        finally:
            for m in frozen:
                m.requires_grad_(True)
        self._update_ema()
        return out

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        # Warm-up (d_t = min(d, (1 + t)/(10 + t))) so early random weights fade out quickly.
        t = self.updates["generator"]
        d = min(self.cfg.ema_decay, (1.0 + t) / (10.0 + t))
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.models["generator"].parameters()):
                p_ema.lerp_(p, 1.0 - d)
            for b_ema, b in zip(self.ema.buffers(), self.models["generator"].buffers()):
                b_ema.copy_(b)

    def pretrain_constrainer(self) -> float:
        """``pretrain_steps`` constrainer updates with Adam(``pretrain_lr``, default betas)."""
        if not self.has_constrainer or self.cfg.pretrain_steps == 0:
            self.pretrained = True
            return float("nan")
        opt = torch.optim.Adam(self.models["constrainer"].parameters(), lr=self.cfg.pretrain_lr)
        loss = torch.tensor(float("nan"))
        for _ in range(self.cfg.pretrain_steps):
            real = self._local(self.problem.sample_real(self.cfg.batch_size, self.rng))
            loss = losses.regression_loss(real["y"], self.models["constrainer"](real["x"]))
            _descend(opt, loss)
        self.pretrained = True
        terms = distributed.average_values({"C4 (pre-training)": loss.item()})
        _check_finite(terms, 0, self.run_dir)
        return loss.item()

    def iteration(self) -> dict[str, float]:
        """n_critic × (critic step, constrainer step), then one generator step; mean terms."""
        sums: dict[str, float] = {}
        for _ in range(self.cfg.n_critic):
            terms, real = self.critic_step()
            if self.has_constrainer:
                terms.update(self.constrainer_step(real))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v / self.cfg.n_critic
        sums.update(self.generator_step())
        self.step += 1
        return distributed.average_values(sums)  # the global batch's terms under torchrun

    # --- loop, history, checkpoints ----------------------------------------------------
    def run(self, until: int | None = None) -> Trainer:
        """Train up to iteration ``until`` (default: ``iterations``), checkpointing on the way."""
        end = self.cfg.iterations if until is None else min(until, self.cfg.iterations)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        distributed.broadcast_modules([*self.models.values(), self.ema])
        if not self.pretrained:
            self.pretrain_constrainer()
        bar = _progress(
            self.progress and distributed.is_main_process(), self.step, self.cfg.iterations
        )
        try:
            while self.step < end:
                start = time.perf_counter()
                if self.parallel:  # dropout masks differ between processes, resumes stay exact
                    distributed.seed_process(self.cfg.seed, self.step)
                terms = self.iteration()
                self.elapsed += time.perf_counter() - start
                _check_finite(terms, self.step, self.run_dir)
                self._log(terms)
                for callback in self.callbacks:
                    callback(self)
                if self.step % self.cfg.checkpoint_every == 0 or self.step == end:
                    self.save_checkpoint()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items() if k.startswith("C")})
        finally:
            if bar is not None:
                bar.close()
        return self

    def _log(self, terms: Mapping[str, float]) -> None:
        if self.run_dir is None or not distributed.is_main_process():
            return
        lrs = {f"lr_{k}": self.optimisers[k].param_groups[0]["lr"] for k in self.optimisers}
        line = {"step": self.step, **terms, **lrs, "time": round(self.elapsed, 3)}
        with open(self.run_dir / HISTORY_NAME, "a") as f:
            f.write(json.dumps(line) + "\n")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; only tensors, dicts, lists, str and numbers."""
        models = {k: m.state_dict() for k, m in self.models.items()}
        if self.ema is not None:
            models["generator_ema"] = self.ema.state_dict()
        history = self.run_dir / HISTORY_NAME if self.run_dir is not None else None
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "pretrained": self.pretrained,
            "finished": self.step >= self.cfg.iterations,
            "elapsed": self.elapsed,
            "models": models,
            "optimisers": {k: o.state_dict() for k, o in self.optimisers.items()},
            "updates": dict(self.updates),
            "rng": _rng_state(self.rng),
            "train_config_json": self.cfg.to_json(),
            "config_json": self.config_json,
            "extra": self.extra,
            "history_bytes": history.stat().st_size if history and history.exists() else 0,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> Trainer:
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        if self.ema is not None:
            self.ema.load_state_dict(state["models"]["generator_ema"])
        for name, opt in self.optimisers.items():
            opt.load_state_dict(state["optimisers"][name])
        self.updates = {k: int(v) for k, v in state["updates"].items()}
        _set_rng_state(self.rng, state["rng"])
        self.step, self.pretrained = int(state["step"]), bool(state["pretrained"])
        self.elapsed, self.extra = float(state["elapsed"]), dict(state["extra"])
        return self

    def save_checkpoint(self) -> Path | None:
        """Write ``RUN/checkpoint.pt`` atomically (temporary name, then rename); process 0 only
        (the others return None)."""
        if self.run_dir is None or not distributed.is_main_process():
            return None
        path = self.run_dir / CHECKPOINT_NAME
        return save_checkpoint(self.state_dict(), path)  # hashed, fsynced, atomic

    def resume(self) -> Trainer:
        """Continue from ``RUN/checkpoint.pt``: restore all state, cut history back to it.

        Every process loads the same checkpoint; process 0 cuts the history."""
        require(self.run_dir is not None, "resume needs a run directory")
        state = load_checkpoint(self.run_dir, map_location="cpu")
        self.load_state_dict(state)
        history = self.run_dir / HISTORY_NAME
        if history.exists() and distributed.is_main_process():
            with open(history, "r+b") as f:
                f.truncate(int(state["history_bytes"]))
        return self


def _descend(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    """Backward, average the gradients over the processes (torchrun), one optimiser step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(p for group in opt.param_groups for p in group["params"])
    opt.step()


def _check_devices(models: Mapping[str, nn.Module]) -> None:
    """Under torchrun a CUDA model must sit on this process's GPU (cuda:LOCAL_RANK)."""
    if distributed.world_size() == 1 or not torch.cuda.is_available():
        return
    own = torch.cuda.current_device()
    for name, model in models.items():
        device = next(model.parameters()).device
        if device.type == "cuda" and device.index != own:
            raise DetganError(
                f"under torchrun the {name} of process {distributed.rank()} is on {device}, not "
                f"its own GPU cuda:{own}; use --device cuda (each process takes cuda:LOCAL_RANK)"
            )


def _check_finite(terms: Mapping[str, float], step: int, run_dir: Path | None) -> None:
    bad = [k for k, v in terms.items() if not math.isfinite(v)]
    if bad:
        where = (
            f"'{run_dir / CHECKPOINT_NAME}'" if run_dir is not None else "none (no run directory)"
        )
        raise DetganError(
            f"non-finite loss {', '.join(bad)} at iteration {step}; training stopped, last good "
            f"checkpoint: {where}; lower the learning rates or check the input data"
        )


def _progress(enabled: bool, initial: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="it", desc="training", dynamic_ncols=True)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check or make a run directory: resuming needs its checkpoint; a non-empty directory is
    only restarted with ``overwrite`` (its checkpoint, history and config are removed).
    Under torchrun process 0 checks and clears it while the others wait."""
    distributed.init_from_environment()
    distributed.on_main_process(lambda: _prepare_run_dir(run_dir, resume, overwrite))
    run_dir.mkdir(parents=True, exist_ok=True)


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        require(
            (run_dir / CHECKPOINT_NAME).is_file(),
            f"nothing to resume: '{run_dir / CHECKPOINT_NAME}' does not exist; drop --resume",
        )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        require(
            overwrite,
            f"run directory '{run_dir}' is not empty; use --resume to continue "
            "it or --overwrite to start afresh",
        )
        for name in (CHECKPOINT_NAME, HISTORY_NAME, "config.json"):
            (run_dir / name).unlink(missing_ok=True)


def load_run(
    run_dir: str | os.PathLike, setup_cls: type, kind: str, extra_keys: Sequence[str] = ()
) -> tuple[dict, Any]:
    """The checkpoint of ``run_dir`` and its stored configuration as a ``setup_cls``.

    A checkpoint of another kind of run (no such configuration, or lacking the numeric
    ``extra_keys`` in its extra state) is refused with a one-line hint to train a ``kind`` run.
    """
    state = load_checkpoint(run_dir)
    try:
        setup = setup_cls.from_json(state["config_json"])
        for key in extra_keys:
            float(state["extra"][key])
        return state, setup
    except (KeyError, ValueError, DetganError):
        raise DetganError(
            f"'{run_dir}' is not a {kind} run; train one with 'detgan train {kind}'"
        ) from None
