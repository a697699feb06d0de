"""Tests for detgan.models.footprint: shapes, gradients, the trigger gate, config errors."""

from __future__ import annotations

import pytest
import torch

from detgan.models.footprint import (
    AixNetConstrainer,
    DenseConstrainer,
    DenseCritic,
    DenseGenerator,
    FootprintModelConfig,
    PaperCritic,
    PaperGenerator,
    build_footprint_models,
    trigger_gate,
)
from detgan.utils import DetganError

N = 4


def _all_get_gradients(module: torch.nn.Module, loss: torch.Tensor) -> bool:
    loss.backward()
    return all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("output", ["relu", "trigger"])
def test_paper_generator_shape_and_gradients(output):
    gen = PaperGenerator(80, output, threshold=0.1)
    x = gen(torch.randn(N, 80), torch.randn(N))
    assert x.shape == (N, 9, 9)
    assert _all_get_gradients(gen, (x * torch.randn_like(x)).sum())


def test_paper_generator_follows_table_1():
    gen = PaperGenerator()
    convt = [m for m in gen.deconv if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.out_channels for m in convt] == [64, 128, 128, 256]
    assert all(m.kernel_size == (3, 3) for m in convt)
    assert gen.dense[0].in_features == 81 and gen.dense[0].out_features == 80
    assert gen.head.kernel_size == (3, 3) and gen.head.out_channels == 1


def test_paper_critic_follows_table_2_and_gets_gradients():
    critic = PaperCritic()
    convs = [m for m in critic.features if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 128, 128, 256]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in critic.modules())
    score = critic(torch.rand(N, 9, 9))
    assert score.shape == (N,)
    assert _all_get_gradients(critic, score.sum())


@pytest.mark.parametrize("make", [lambda: AixNetConstrainer(8), lambda: DenseConstrainer(9, 32)])
def test_constrainers_shape_and_gradients(make):
    net = make()
    out = net(torch.rand(N, 9, 9))
    assert out.shape == (N,)
    assert _all_get_gradients(net, out.sum())


def test_dense_generator_and_critic_shapes_and_gradients():
    gen = DenseGenerator(8, 9, 32, 2, "trigger", threshold=0.5)
    critic = DenseCritic(9, 32, 2, conditional=True, sorted_values=True)
    y = torch.randn(N)
    x = gen(torch.randn(N, 8), y)
    assert x.shape == (N, 9, 9)
    score = critic(x, y)
    assert score.shape == (N,)
    assert _all_get_gradients(gen, score.sum())
    assert all(p.grad is not None for p in critic.parameters())


def test_trigger_gate_gives_zero_or_at_least_threshold_with_identity_gradient():
    v = torch.tensor([-1.0, 0.5, 1.0, 3.0], requires_grad=True)
    y = trigger_gate(v, 1.0)
    assert y.tolist() == [0.0, 0.0, 1.0, 3.0]
    y.sum().backward()
    assert v.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_dense_generator_output_respects_threshold():
    gen = DenseGenerator(8, 9, 32, 2, "trigger", threshold=0.7)
    x = gen(torch.randn(256, 8), torch.randn(256))
    on = x[x != 0]
    assert on.numel() > 0 and bool((on >= 0.7).all())


def test_build_models_by_config():
    models = build_footprint_models(FootprintModelConfig(), 0.5)
    assert isinstance(models["generator"], PaperGenerator)
    assert isinstance(models["constrainer"], AixNetConstrainer)
    cfg = FootprintModelConfig(architecture="dense", constrainer="dense", latent_dim=4, hidden=8)
    models = build_footprint_models(cfg, 0.5)
    assert isinstance(models["critic"], DenseCritic)
    assert isinstance(models["constrainer"], DenseConstrainer)


def test_config_errors_name_the_choices():
    with pytest.raises(DetganError, match="architecture 'conv' unknown; use one of paper, dense"):
        FootprintModelConfig(architecture="conv")
    with pytest.raises(DetganError, match="unknown setting"):
        FootprintModelConfig.from_dict({"widht": 3})


def test_gate_output_is_zero_or_between_threshold_and_ceiling():
    gen = DenseGenerator(8, 9, 32, 2, "gate", threshold=0.7, ceiling=0.9)
    assert gen.noise_dim == 8 + 81
    with torch.no_grad():
        gen.mean.bias[81:] = 5.0  # amplitudes far above the ceiling
    x = gen(torch.randn(512, gen.noise_dim), torch.randn(512))
    on = x[x != 0]
    assert on.numel() > 0 and bool((on >= 0.7).all()) and bool((on <= 0.9 + 1e-6).all())
    assert (x == 0).any()
    x.sum().backward()
    assert all(p.grad is not None for p in gen.parameters())
