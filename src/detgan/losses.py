"""Adversarial objectives C1..C4, the gradient penalty and self-regularisation: pure functions.

Notation as in ``paper_methods.md`` §1 [E18, arXiv:1802.03325; GP17, arXiv:1704.00028]: x real
events, x̃ = g(z, y) generated events, f the critic, a the constrainer (a regressor of the label).
Networks return per-event outputs; these functions turn them into scalar terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "wasserstein_estimate",
    "gradient_penalty",
    "constraint_loss",
    "regression_loss",
    "generator_adversarial_loss",
    "critic_loss",
    "self_regularisation",
    "integral_regularisation",
]


def wasserstein_estimate(critic_real: Tensor, critic_fake: Tensor) -> Tensor:
    """C1 = E[f(x)] − E[f(x̃)], the critic's estimate of the Wasserstein-1 distance.

    critic_real (N,) or (N, 1), critic_fake (M,) or (M, 1) → scalar. The critic maximises it.
    """
    return critic_real.mean() - critic_fake.mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    weight: float = 10.0,
    *,
    epsilon: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """C2 = λ · E[(‖∇_û f(û)‖₂ − 1)²] with û = ε x + (1 − ε) x̃, ε ~ U[0, 1] per event [GP17].

    real, fake (N, ...) → scalar. The norm runs over all features of one event. ``critic`` maps
    (N, ...) → (N,) or (N, 1) (bind labels into it with a closure for conditional critics).
    ``epsilon`` (N,) may be given explicitly (tests); otherwise it is drawn with ``generator``
    on the CPU and moved to the data's device, so results do not depend on the device.
    The graph is kept (``create_graph``) so the penalty trains the critic.
    """
    n = real.shape[0]
    if epsilon is None:
        epsilon = torch.rand(n, generator=generator, dtype=real.dtype)
    eps = epsilon.to(real.device, real.dtype).reshape(n, *([1] * (real.ndim - 1)))
    mixed = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norms = grad.reshape(n, -1).norm(2, dim=1)
    return weight * (norms - 1.0).pow(2).mean()


def constraint_loss(label: Tensor, predicted: Tensor, weight: float = 0.01) -> Tensor:
    """C3 = κ · E[(y_label − a(x̃))²], the generator's label constraint. (N,) → scalar."""
    return weight * (label.reshape(-1) - predicted.reshape(-1)).pow(2).mean()


def regression_loss(label: Tensor, predicted: Tensor) -> Tensor:
    """C4 = E[(y_data − a(x))²], the constrainer's supervised loss on real events. → scalar."""
    return (label.reshape(-1) - predicted.reshape(-1)).pow(2).mean()


def generator_adversarial_loss(critic_fake: Tensor) -> Tensor:
    """−E[f(x̃)], the adversarial part of the generator loss. (N,) → scalar."""
    return -critic_fake.mean()


def critic_loss(c1: Tensor, c2: Tensor) -> Tensor:
    """The critic minimises −C1 + C2."""
    return -c1 + c2


def self_regularisation(refined: Tensor, inputs: Tensor, weight: float = 0.0) -> Tensor:
    """w · E[‖ψ(x) − x‖₁]: the SimGAN penalty [S16, arXiv:1612.07828] keeping refined events close.

    refined, inputs (N, ...) → scalar; the L1 norm sums over the features of one event.
    """
    n = refined.shape[0]
    return weight * (refined - inputs).abs().reshape(n, -1).sum(dim=1).mean()


def integral_regularisation(refined: Tensor, inputs: Tensor, weight: float = 0.0) -> Tensor:
    """w · mean over the stations with signal in both the input and the refined traces of
    |a(ψ(x)) − a(x)|, a = log10(1 + S) the station's level, S = Σ_t (10^u − 1) its signal
    (u = log10(1 + s) per time bin, the last axis): ties each refined station's integral, where
    the energy information lives, to its input's while leaving the pulse shape free, and leaves
    the refiner free to switch stations off (not in SimGAN or the paper)."""

    def level(u: Tensor) -> Tensor:
        return torch.log10(1.0 + torch.expm1(u * math.log(10.0)).clamp_min(0.0).sum(-1))

    active = (inputs > 0).any(-1) & (refined.detach() > 0).any(-1)
    if weight == 0 or not bool(active.any()):
        return refined.new_zeros(())
    return weight * (level(refined) - level(inputs)).abs()[active].mean()
