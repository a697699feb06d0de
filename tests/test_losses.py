"""Tests for detgan.losses: C1..C4, the gradient penalty against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detgan import losses


def test_wasserstein_estimate_is_difference_of_means():
    c1 = losses.wasserstein_estimate(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5, 2.0]))
    assert torch.isclose(c1, torch.tensor(2.0 - 1.0))


def test_gradient_penalty_equals_hand_computed_value_for_linear_critic():
    # f(u) = w·u  =>  ∇f = w for every u, so C2 = λ (‖w‖ − 1)².
    critic = nn.Linear(3, 1, bias=True)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[1.0, 2.0, 2.0]]))  # ‖w‖ = 3
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    c2 = losses.gradient_penalty(critic, real, fake, weight=10.0)
    assert torch.isclose(c2, torch.tensor(10.0 * (3.0 - 1.0) ** 2))


def test_gradient_penalty_equals_hand_computed_value_for_quadratic_critic():
    # f(u) = ½ Σ u²  =>  ∇f(û) = û = ε x + (1 − ε) x̃ ; norms by hand.
    def critic(u):
        return 0.5 * (u**2).sum(dim=(1, 2))

    real = torch.tensor([[[3.0, 0.0]], [[0.0, 2.0]]])
    fake = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    eps = torch.tensor([0.5, 0.25])
    # û₁ = (2, 0) → ‖·‖ = 2; û₂ = (0, 0.5) → 0.5 ; mean((1)², (−0.5)²) = 0.625
    c2 = losses.gradient_penalty(critic, real, fake, weight=3.0, epsilon=eps)
    assert torch.isclose(c2, torch.tensor(3.0 * 0.625))


def test_gradient_penalty_trains_the_critic():
    critic = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    c2 = losses.gradient_penalty(critic, torch.randn(6, 4), torch.randn(6, 4), 10.0)
    c2.backward()
    # Every parameter but the output bias (which does not change ∇_u f) gets a gradient.
    params = [p for name, p in critic.named_parameters() if name != "2.bias"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_gradient_penalty_is_reproducible_with_a_generator():
    critic = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    real, fake = torch.randn(6, 4), torch.randn(6, 4)
    a = losses.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    b = losses.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_constraint_and_regression_losses():
    y, pred = torch.tensor([1.0, 2.0]), torch.tensor([[0.0], [4.0]])
    assert torch.isclose(losses.regression_loss(y, pred), torch.tensor((1 + 4) / 2))
    assert torch.isclose(losses.constraint_loss(y, pred, 0.01), torch.tensor(0.01 * 2.5))


def test_generator_and_critic_losses():
    assert losses.generator_adversarial_loss(torch.tensor([1.0, 3.0])) == -2.0
    assert losses.critic_loss(torch.tensor(2.0), torch.tensor(0.5)) == -1.5


def test_self_regularisation_is_weighted_per_event_l1():
    refined = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    inputs = torch.zeros(2, 2)
    assert losses.self_regularisation(refined, inputs, 0.5) == 0.5 * (2.0 + 0.0) / 2
    assert losses.self_regularisation(refined, inputs) == 0.0


def test_integral_regularisation_ties_station_levels_not_pulse_shapes():
    """Mean over stations with signal in both of |Δ log10(1 + S)|: moving a pulse in time costs
    nothing, doubling a station's signal costs log10 of about 2; empty stations and stations
    the refiner switches off don't count."""
    to_u = lambda s: torch.log10(1.0 + torch.tensor(s, dtype=torch.float32))  # noqa: E731
    inputs = to_u([[[0.0, 9.0, 90.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # (1 event, 2 stations, T)
    shifted = to_u([[[9.0, 90.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]]])
    assert losses.integral_regularisation(shifted, inputs, 1.0).item() == pytest.approx(0, abs=1e-5)
    doubled = to_u([[[0.0, 18.0, 180.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    expected = 0.5 * np.log10(199.0 / 100.0)
    got = losses.integral_regularisation(doubled, inputs, 0.5).item()
    assert got == pytest.approx(expected, rel=1e-4)
    assert losses.integral_regularisation(doubled, inputs).item() == 0.0
    both = torch.cat([inputs[:, :1], doubled[:, :1]], 1)  # stations of 99 and 198 VEM
    first_doubled_second_off = torch.cat([doubled[:, :1], torch.zeros_like(inputs[:, :1])], 1)
    got = losses.integral_regularisation(first_doubled_second_off, both, 0.5).item()
    assert got == pytest.approx(expected, rel=1e-4)  # the station switched off costs nothing
