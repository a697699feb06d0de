"""Tests for detgan.train: named steps alone, decay, a toy problem, checkpoints and exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from detgan.train import (
    CHECKPOINT_NAME,
    HISTORY_NAME,
    AdversarialProblem,
    TrainConfig,
    Trainer,
    keras_decay,
    load_checkpoint,
)
from detgan.utils import DetganError


class CondGenerator(nn.Module):
    def __init__(self, latent: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent + 1, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, z, y):
        return self.net(torch.cat([z, y[:, None]], dim=1))


class CondCritic(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden), nn.LeakyReLU(0.2), nn.Dropout(0.1), nn.Linear(hidden, 1)
        )

    def forward(self, x, y):
        return self.net(torch.cat([x, y[:, None]], dim=1)).squeeze(1)


def toy_problem(n: int = 4096, seed: int = 0) -> AdversarialProblem:
    """x | y ~ N((y, −y), 0.1²), y ~ U(−1, 1): E[x₀ | y] = y is the known answer."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=g) * 2 - 1
    x = torch.stack([y, -y], dim=1) + 0.1 * torch.randn(n, 2, generator=g)

    def sample_real(b, rng):
        idx = torch.randint(n, (b,), generator=rng)
        return {"x": x[idx], "y": y[idx]}

    def sample_fake(gen, batch, rng):
        return gen(torch.randn(len(batch["y"]), 2, generator=rng), batch["y"]), batch["y"]

    return AdversarialProblem(sample_real, sample_fake, lambda c, u, lab: c(u, lab))


def make_trainer(run_dir=None, constrainer=True, **cfg) -> Trainer:
    torch.manual_seed(0)
    models = {"generator": CondGenerator(), "critic": CondCritic()}
    if constrainer:
        models["constrainer"] = nn.Sequential(
            nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1), nn.Flatten(0)
        )
    base = dict(
        iterations=6, n_critic=2, batch_size=32, checkpoint_every=3, pretrain_steps=2, ema_decay=0.9
    )
    base.update(cfg)
    return Trainer(
        models,
        toy_problem(),
        TrainConfig(**base),
        run_dir,
        progress=False,
        extra={"note": "toy", "tensor": torch.arange(3)},
    )


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_critic_step_updates_only_the_critic():
    t = make_trainer()
    before = {k: _params(m) for k, m in t.models.items()}
    terms, batch = t.critic_step()
    assert set(terms) == {"C1", "C2"} and batch["x"].shape == (32, 2)
    assert _changed(before["critic"], t.models["critic"])
    assert not _changed(before["generator"], t.models["generator"])
    assert not _changed(before["constrainer"], t.models["constrainer"])


def test_constrainer_step_updates_only_the_constrainer():
    t = make_trainer()
    before = {k: _params(m) for k, m in t.models.items()}
    _, batch = t.critic_step()
    before["critic"] = _params(t.models["critic"])
    assert set(t.constrainer_step(batch)) == {"C4"}
    assert _changed(before["constrainer"], t.models["constrainer"])
    assert not _changed(before["critic"], t.models["critic"])


def test_generator_step_updates_only_the_generator_and_every_parameter_gets_a_gradient():
    t = make_trainer()
    before = {k: _params(m) for k, m in t.models.items()}
    terms = t.generator_step()
    assert set(terms) == {"generator", "C3"}
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in t.models["generator"].parameters()
    )
    assert _changed(before["generator"], t.models["generator"])
    assert not _changed(before["critic"], t.models["critic"])
    assert not _changed(before["constrainer"], t.models["constrainer"])
    assert all(p.requires_grad for p in t.models["critic"].parameters())


def test_keras_learning_rate_decay():
    assert keras_decay(5e-4, 1e-4, 0) == 5e-4
    assert keras_decay(5e-4, 1e-4, 10000) == pytest.approx(2.5e-4)
    t = make_trainer(decay_generator=0.5, lr_generator=1e-3)
    t.generator_step()
    t.generator_step()
    assert t.optimisers["generator"].param_groups[0]["lr"] == pytest.approx(1e-3 / 1.5)


class LinearGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)

    def forward(self, z, y):
        return self.net(torch.cat([z, y[:, None]], dim=1))


def test_toy_conditional_problem_is_learnt():
    # Known answer: E[x | y] = (y, −y) with spread 0.1. Stated bound after 400 iterations
    # (a few seconds on one core): every bin mean within 0.1, spread within [0.03, 0.2].
    torch.manual_seed(0)
    cfg = TrainConfig(
        iterations=400,
        n_critic=5,
        batch_size=128,
        gp_weight=1.0,
        lr_generator=5e-3,
        lr_critic=2e-3,
        decay_generator=0.0,
        decay_critic=0.0,
        ema_decay=0.95,
    )
    t = Trainer(
        {"generator": LinearGenerator(), "critic": CondCritic(64)},
        toy_problem(),
        cfg,
        progress=False,
    ).run()
    y = torch.linspace(-0.9, 0.9, 7).repeat_interleave(500)
    with torch.no_grad():
        x = t.sampling_generator(torch.randn(len(y), 2), y).reshape(7, 500, 2)
    truth = torch.stack([y, -y], 1).reshape(7, 500, 2)[:, 0]
    assert (x.mean(1) - truth).abs().max() < 0.1
    assert 0.03 < x.std(1).mean() < 0.2


def test_checkpoint_is_loadable_with_weights_only_and_complete(tmp_path):
    make_trainer(tmp_path).run()
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 6 and state["finished"]
    assert set(state["models"]) == {"generator", "critic", "constrainer", "generator_ema"}
    assert set(state["optimisers"]) == {"generator", "critic", "constrainer"}
    assert {"sampler", "torch"} <= set(state["rng"])
    assert json.loads(state["train_config_json"])["n_critic"] == 2
    assert torch.equal(state["extra"]["tensor"], torch.arange(3))
    lines = (tmp_path / HISTORY_NAME).read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == [1, 2, 3, 4, 5, 6]
    assert {"C1", "C2", "C3", "C4"} <= set(json.loads(lines[0]))


def test_resume_reproduces_an_uninterrupted_run_step_for_step(tmp_path):
    full = make_trainer(tmp_path / "a").run()
    part = make_trainer(tmp_path / "b")

    def crash(trainer):
        if trainer.step == 5:  # after the checkpoint at 3, with history written up to 5
            raise KeyboardInterrupt

    part.callbacks.append(crash)
    with pytest.raises(KeyboardInterrupt):
        part.run()
    resumed = make_trainer(tmp_path / "b").resume()
    assert resumed.step == 3
    resumed.run()
    for name in full.models:
        for p, q in zip(
            full.models[name].state_dict().values(), resumed.models[name].state_dict().values()
        ):
            assert torch.equal(p, q), name
    assert all(torch.equal(p, q) for p, q in zip(full.ema.parameters(), resumed.ema.parameters()))

    def strip(path):
        return [
            {k: v for k, v in json.loads(s).items() if k != "time"}
            for s in path.read_text().splitlines()
        ]

    assert strip(tmp_path / "a" / HISTORY_NAME) == strip(tmp_path / "b" / HISTORY_NAME)


def test_non_finite_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    t = make_trainer(tmp_path, iterations=10)
    t.run(until=3)
    original = t.problem.sample_real

    def poisoned(b, rng):
        batch = original(b, rng)
        return {"x": batch["x"] * float("nan"), "y": batch["y"]}

    t.problem.sample_real = poisoned
    with pytest.raises(
        DetganError,
        match="non-finite loss .* at iteration 4; training stopped, last good checkpoint",
    ):
        t.run()
    assert load_checkpoint(tmp_path)["step"] == 3


def test_errors():
    with pytest.raises(DetganError, match="n_critic must be at least 1"):
        TrainConfig(n_critic=0)
    with pytest.raises(DetganError, match="checkpoint '.*' not found"):
        load_checkpoint("/nonexistent/run")
    with pytest.raises(DetganError, match="needs models named 'generator' and 'critic'"):
        Trainer({"generator": nn.Linear(1, 1)}, toy_problem(), TrainConfig())
