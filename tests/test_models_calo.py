"""Calorimeter WGAN networks: shapes, gradients, energy sharing, frozen embedded regressor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detgan import losses
from detgan.models.calo import (
    CaloChallengeModelConfig,
    DenseCaloConfig,
    DenseCaloCritic,
    EnergyPrior,
    LayerEnergyFlow,
    LHCbConvConfig,
    aligned_coordinates,
    aligned_table,
    build_calo_models,
    model_config_class,
)
from detgan.observables_lhcb import lhcb_cluster_metrics
from detgan.train import AdversarialProblem, TrainConfig, Trainer
from detgan.transforms import Standardise
from detgan.utils import DetganError

ATLAS_SIZES = (21, 48, 6, 14)
SMALL_CONV = LHCbConvConfig(latent_dim=16, channels=16)
CC_SIZES = (8, 160, 190, 5, 5)  # dataset 1-photons: 368 voxels in 5 non-empty layers


def _inputs(kind: str, n: int = 6):
    g = torch.Generator().manual_seed(0)
    if kind == "dense":
        models = build_calo_models("dense", DenseCaloConfig(latent_dim=10, hidden=32), ATLAS_SIZES)
        x, y = torch.rand(n, 89, generator=g), torch.randn(n, 1, generator=g)
    elif kind == "lhcb-conv":
        models = build_calo_models("lhcb-conv", SMALL_CONV)
        x, y = torch.randn(n, 30, 30, generator=g), torch.randn(n, 5, generator=g)
    else:
        models = build_calo_models("calochallenge", CaloChallengeModelConfig(hidden=32), CC_SIZES)
        x, y = torch.rand(n, 368, generator=g), torch.randn(n, 1, generator=g)
    z = torch.randn(n, models["generator"].noise_dim, generator=g)
    return models, z, x, y


@pytest.mark.parametrize(
    "kind,shape", [("dense", (6, 89)), ("lhcb-conv", (6, 30, 30)), ("calochallenge", (6, 368))]
)
def test_shapes(kind, shape):
    models, z, x, y = _inputs(kind)
    assert models["generator"](z, y).shape == shape
    assert models["critic"](x, y).shape == (6,)


@pytest.mark.parametrize("kind", ["dense", "lhcb-conv", "calochallenge"])
def test_every_trainable_parameter_gets_a_gradient(kind):
    models, z, x, y = _inputs(kind)
    fake = models["generator"](z, y)
    score = models["critic"](fake, y).sum() + models["critic"](x, y).sum()
    score.backward()
    for name in ("generator", "critic"):
        for pname, p in models[name].named_parameters():
            if not p.requires_grad:
                assert pname.startswith("regressor."), pname
                continue
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"


def test_regressor_gets_gradient_when_pretrained():
    _, _, x, y = _inputs("lhcb-conv")
    reg = build_calo_models("lhcb-conv", SMALL_CONV)["regressor"].requires_grad_(True)
    losses.regression_loss(y, reg(x)).backward()
    assert all(p.grad is not None for p in reg.parameters())


def test_dense_softmax_conserves_energy():
    models, z, _, y = _inputs("dense", n=64)
    frac = models["generator"](z, y)
    energy = torch.linspace(1e4, 3e5, 64)
    cells = frac * energy[:, None]
    assert (frac >= 0).all()
    torch.testing.assert_close(cells.sum(1), energy, rtol=1e-5, atol=0.0)


DENSE_OPTIONS = DenseCaloConfig(
    latent_dim=10, hidden=32, critic_log_scale=1e-3, critic_layer_sums=True
)


def test_dense_critic_options_shapes_and_gradients():
    models = build_calo_models("dense", DENSE_OPTIONS, ATLAS_SIZES)
    critic = models["critic"]
    assert critic.net[0].in_features == 89 + 4 + 1  # cells, 4 layer sums, condition
    z, y = torch.randn(6, 10), torch.randn(6, 1)
    fake = models["generator"](z, y)
    assert critic(fake, y).shape == (6,)
    (critic(fake, y).sum() + critic(torch.rand(6, 89), y).sum()).backward()
    for name in ("generator", "critic"):
        for pname, p in models[name].named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"


def test_dense_critic_log_scale_resolves_small_fractions():
    """A 10⁻⁴ change of a Presampler cell moves the log-scaled critic's input by ~10 % of a
    unit, the paper's linear input by 10⁻⁴; the layer sums carry the change of the layer."""
    torch.manual_seed(0)
    lin = build_calo_models("dense", DenseCaloConfig(hidden=8), ATLAS_SIZES)["critic"]
    log = build_calo_models("dense", DENSE_OPTIONS, ATLAS_SIZES)["critic"]
    x = torch.zeros(1, 89)
    x[0, 0] = 1.0
    bumped = x.clone()
    bumped[0, 70] = 1e-4  # a Presampler cell (flat range 69..74)
    feats = {}
    for name, critic in (("lin", lin), ("log", log)):
        captured: list[torch.Tensor] = []
        hook = critic.net[0].register_forward_hook(lambda _m, i, _o, c=captured: c.append(i[0]))
        critic(x, torch.zeros(1, 1)), critic(bumped, torch.zeros(1, 1))
        hook.remove()
        feats[name] = captured[1] - captured[0]
    assert feats["lin"].abs().max() == pytest.approx(1e-4, rel=1e-3)
    assert feats["log"][0, 70] == pytest.approx(torch.log1p(torch.tensor(0.1)).item(), rel=1e-4)
    assert feats["log"][0, 89 + 2] == pytest.approx(feats["log"][0, 70].item(), rel=1e-6)
    assert feats["log"][0, [89, 90, 92]].abs().max() == 0  # other layers' sums unchanged


def test_dense_critic_layer_sums_need_matching_sizes():
    with pytest.raises(DetganError, match="critic_layer_sums needs layer sizes summing to 89"):
        DenseCaloCritic(89, DENSE_OPTIONS, layer_sizes=(21, 48, 6))
    with pytest.raises(DetganError, match="critic_log_scale must be >= 0"):
        DenseCaloConfig(critic_log_scale=-1.0)


def test_calochallenge_per_layer_sharing_gives_layer_energies():
    cfg = CaloChallengeModelConfig(hidden=32, per_layer=True)
    gen = build_calo_models("calochallenge", cfg, CC_SIZES)["generator"]
    z, y = torch.randn(5, cfg.latent_dim), torch.randn(5, 1)
    frac = gen(z, y)
    h = gen.act(gen.trunk(torch.cat([z, y], 1)))
    resp = torch.nn.functional.softplus(gen.response(h))
    per_layer = torch.stack([p.sum(1) for p in torch.split(frac, list(CC_SIZES), 1)], 1)
    torch.testing.assert_close(per_layer, resp)
    assert (frac >= 0).all()


def test_calochallenge_total_response_is_one_output_shared_among_layers():
    cfg = CaloChallengeModelConfig(
        hidden=32, total_response=True, critic_layer_fractions=True, critic_mev_scale=1.0
    )
    models = build_calo_models("calochallenge", cfg, CC_SIZES)
    gen, critic = models["generator"], models["critic"]
    z, y = torch.randn(5, cfg.latent_dim), torch.randn(5, 1)
    frac = gen(z, y)
    a = gen.response(gen.act(gen.trunk(torch.cat([z, y], 1))))
    assert a.shape == (5, len(CC_SIZES) + 1)
    per_layer = torch.stack([p.sum(1) for p in torch.split(frac, list(CC_SIZES), 1)], 1)
    total = torch.nn.functional.softplus(a[:, 0])
    torch.testing.assert_close(per_layer.sum(1), total)
    torch.testing.assert_close(per_layer / total[:, None], torch.softmax(a[:, 1:], 1))
    x = torch.log1p(frac * 1e4 / cfg.critic_mev_scale)  # E_inc = 10 GeV, MeV units
    assert critic.net[0].in_features == 368 + len(CC_SIZES) + 1 + 1
    critic(x, y).sum().backward()
    for name in ("generator", "critic"):
        for pname, p in models[name].named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"


def test_calochallenge_condition_response_shares_the_conditional_total():
    cfg = CaloChallengeModelConfig(hidden=32, condition_response=True, critic_mev_scale=1.0)
    models = build_calo_models("calochallenge", cfg, CC_SIZES)
    z, y = torch.randn(7, cfg.latent_dim), torch.randn(7, 2)  # (log E_inc, log E_tot)
    frac = models["generator"](z, y)
    torch.testing.assert_close(frac.sum(1), torch.ones(7))
    assert (frac >= 0).all()
    x = torch.log1p(frac * 1e4)
    (models["critic"](x, y).sum()).backward()
    for name in ("generator", "critic"):
        for pname, p in models[name].named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname}"
    moved = models["generator"](z, y + torch.tensor([[0.0, 1.0]]))
    assert not torch.allclose(moved, frac)  # the E_tot column conditions the shares


def test_calochallenge_layer_flow_shares_exactly_the_given_layer_shares():
    """``layer_flow``: the label's last L columns are the layer shares of E_tot; the generator
    only shares within the layers (its layer sums are those shares, empty layers get 0)."""
    base = {"hidden": 16, "condition_response": True, "condition_layers": True}
    cfg = CaloChallengeModelConfig(**base, layer_flow=True, critic_mev_scale=1.0)
    assert cfg.label_width(len(CC_SIZES)) == 2 + 2 * len(CC_SIZES)
    models = build_calo_models("calochallenge", cfg, CC_SIZES)
    shares = torch.tensor([[0.1, 0.3, 0.5, 0.1, 0.0], [0.0, 0.2, 0.7, 0.05, 0.05]])
    y = torch.cat([torch.randn(2, 2), 2 * (shares > 0).float() - 1, shares], 1)
    frac = models["generator"](torch.randn(2, models["generator"].noise_dim), y)
    layers = torch.stack([p.sum(1) for p in torch.split(frac, CC_SIZES, 1)], 1)
    torch.testing.assert_close(layers, shares)
    assert models["critic"](torch.log1p(frac), y).shape == (2,)
    with pytest.raises(DetganError, match="layer_flow needs condition_layers"):
        CaloChallengeModelConfig(layer_flow=True)
    with pytest.raises(DetganError, match="drop layer_prior and layer_noise"):
        CaloChallengeModelConfig(**base, layer_flow=True, layer_prior=True)


def _perturbed_flow(n_layers: int, seed: int) -> LayerEnergyFlow:
    flow = LayerEnergyFlow(n_layers, hidden=16, couplings=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in flow.nets:  # away from the identity start
            net[-1].weight.copy_(0.5 * torch.randn(net[-1].weight.shape, generator=g))
            net[-1].bias.copy_(0.5 * torch.randn(net[-1].bias.shape, generator=g))
    return flow


def test_layer_energy_flow_density_is_normalised():
    """The change of variables is right: exp(log_prob) of a non-trivial two-layer flow
    integrates to 1 over the plane, for each condition."""
    flow = _perturbed_flow(2, seed=0)
    g = torch.linspace(-40.0, 40.0, 1201)
    u = torch.cartesian_prod(g, g)
    for c in ([0.5, 1.0, -1.0], [-1.0, 1.0, 1.0]):
        with torch.no_grad():
            p = flow.log_prob(u, torch.tensor([c]).expand(len(u), 3)).double().exp()
        assert abs(float(p.sum()) * float(g[1] - g[0]) ** 2 - 1.0) < 2e-3


def test_layer_energy_flow_learns_a_known_conditional_distribution():
    """Toy stage 1: log(E_l/E_inc) of two anticorrelated layers whose means move with E_inc,
    layer 0 empty in 30 % of the events. After training, the draws have the right means per
    energy, spreads and correlation, and the empty layers stay empty."""
    from detgan.studies.calo import train_layer_flow

    rng = np.random.default_rng(1)
    n = 4000
    e_inc = rng.choice([1e3, 1e5], n)
    a = rng.normal(0, 1, n)
    log_f = np.column_stack(
        [-3 + 0.2 * np.log10(e_inc) + 0.5 * a, -0.5 - 0.1 * a + 0.05 * rng.normal(0, 1, n)]
    )
    layers = np.exp(log_f) * e_inc[:, None]
    layers[rng.random(n) < 0.3, 0] = 0.0
    flow = LayerEnergyFlow(2, hidden=32, couplings=4)
    t = torch.from_numpy
    train_layer_flow(flow, t(e_inc), t(layers), steps=600, seed=0, batch=256, lr=3e-3)
    for e in (1e3, 1e5):
        filled = torch.tensor([[True, True]] * 3000 + [[False, True]] * 1000)
        got = flow.draw(torch.full((4000,), e), filled, torch.Generator().manual_seed(2))
        assert (got[3000:, 0] == 0).all() and (got[:, 1] > 0).all()
        lf = torch.log(got[:3000] / e).numpy()
        np.testing.assert_allclose(lf.mean(0), [-3 + 0.2 * np.log10(e), -0.5], atol=0.08)
        np.testing.assert_allclose(lf.std(0), [0.5, 0.112], rtol=0.2)
        assert np.corrcoef(lf.T)[0, 1] < -0.8


def test_dense_condition_layers_leave_the_flagged_layers_empty():
    sizes = (4, 6, 2)
    cfg = DenseCaloConfig(latent_dim=4, hidden=8, condition_layers=True)
    models = build_calo_models("dense", cfg, sizes)
    flags = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
    y = torch.cat([torch.randn(2, 1), flags], 1)  # (log E_tot, flags)
    frac = models["generator"](torch.randn(2, 4), y)
    layers = torch.stack([p.sum(1) for p in torch.split(frac, sizes, 1)], 1)
    assert (layers[flags < 0] == 0).all() and (layers[flags > 0] > 0).all()
    torch.testing.assert_close(frac.sum(1), torch.ones(2))
    assert models["critic"](frac, y).shape == (2,)


def test_calochallenge_condition_layers_leave_the_flagged_layers_empty():
    """Layers flagged −1 in the label get no energy; the others share E_tot (rows sum to 1)."""
    cfg = CaloChallengeModelConfig(
        hidden=16, condition_response=True, condition_layers=True, critic_mev_scale=1.0
    )
    models = build_calo_models("calochallenge", cfg, CC_SIZES)
    flags = torch.tensor([[1.0, -1.0, 1.0, 1.0, -1.0], [-1.0, 1.0, 1.0, 1.0, 1.0]])
    y = torch.cat([torch.randn(2, 2), flags], 1)
    frac = models["generator"](torch.randn(2, cfg.latent_dim), y)
    layers = torch.stack([p.sum(1) for p in torch.split(frac, CC_SIZES, 1)], 1)
    assert (layers[flags < 0] == 0).all() and (layers[flags > 0] > 0).all()
    torch.testing.assert_close(frac.sum(1), torch.ones(2))
    assert models["critic"](torch.log1p(frac), y).shape == (2,)  # the critic sees the flags
    with pytest.raises(DetganError, match="condition_layers needs condition_response=true"):
        CaloChallengeModelConfig(condition_layers=True)


def test_calochallenge_critic_layer_fractions_are_the_layer_energies():
    """The critic's layer inputs are g(E_l/E_inc) and g(E_tot/E_inc), g(r) = log(1 + r/s)."""
    cfg = CaloChallengeModelConfig(hidden=8, critic_layer_fractions=True, frac_scale=1e-3)
    critic = build_calo_models("calochallenge", cfg, CC_SIZES)["critic"]
    frac = torch.zeros(1, 368)
    frac[0, 0], frac[0, 3], frac[0, 200] = 0.01, 0.02, 0.5  # layer 0: 0.03, layer 2: 0.5
    captured = []
    critic.net[0].register_forward_hook(lambda _m, inp, _o: captured.append(inp[0]))
    critic(torch.log1p(frac / 1e-3), torch.zeros(1, 1))
    layers = captured[0][0, 368:374]
    expected = torch.log1p(torch.tensor([0.03, 0.0, 0.5, 0.0, 0.0, 0.53]) / 1e-3)
    torch.testing.assert_close(layers, expected, rtol=1e-4, atol=1e-4)


def test_embedded_regressor_stays_frozen_in_training():
    torch.manual_seed(0)
    models = build_calo_models("lhcb-conv", SMALL_CONV)
    before = {k: v.clone() for k, v in models["regressor"].state_dict().items()}
    x, y = torch.randn(32, 30, 30), torch.randn(32, 5)

    def sample_real(n, rng):
        idx = torch.randint(32, (n,), generator=rng)
        return {"x": x[idx], "y": y[idx]}

    def sample_fake(gen, batch, rng):
        z = torch.randn(len(batch["y"]), gen.noise_dim, generator=rng)
        return gen(z, batch["y"]), batch["y"]

    problem = AdversarialProblem(sample_real, sample_fake, lambda c, u, lab: c(u, lab))
    cfg = TrainConfig(iterations=2, n_critic=2, batch_size=8)
    critic = models["critic"]
    trainer = Trainer(
        {"generator": models["generator"], "critic": critic}, problem, cfg, progress=False
    )
    trainer.run()
    for k, v in models["regressor"].state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(p.requires_grad for p in critic.regressor.parameters())
    assert critic.training and not critic.regressor.training
    assert critic.regressor is models["regressor"]
    assert any(k.startswith("regressor.") for k in critic.state_dict())


def test_lhcb_energy_sharing_gives_fractions_that_sum_to_one():
    models = build_calo_models("lhcb-conv", SMALL_CONV.replace(energy_sharing=True))
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(6, 16, generator=g), torch.randn(6, 5, generator=g)
    f = models["generator"](z, y)
    assert f.shape == (6, 30, 30) and (f >= 0).all()
    torch.testing.assert_close(f.sum((1, 2)), torch.ones(6))
    models["critic"](torch.log1p(1e4 * f), y).sum().backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in models["generator"].parameters()
    )


def test_lhcb_energy_sharing_prior_is_the_untrained_output():
    gen = build_calo_models("lhcb-conv", SMALL_CONV.replace(energy_sharing=True))["generator"]
    mean = torch.rand(30, 30)
    mean[:10] = 0.0  # floored at 1e-6
    mean /= mean.sum()
    gen.set_prior(mean)
    torch.nn.init.zeros_(gen.up[-1].weight)
    torch.nn.init.zeros_(gen.up[-1].bias)
    f = gen(torch.randn(3, 16), torch.randn(3, 5))
    expected = mean.clamp_min(1e-6) / mean.clamp_min(1e-6).sum()
    torch.testing.assert_close(f, expected.expand(3, 30, 30))
    assert "log_prior" not in build_calo_models("lhcb-conv", SMALL_CONV)["generator"].state_dict()


def test_lhcb_aligned_coordinates_are_the_cluster_metrics_frame():
    """(inclination, s, t) from the expected centre along and across the track, as the [C18]
    cluster metrics define them: A_L and A_T computed from s and t agree with the metrics'."""
    cond = torch.tensor(
        [[0.0, 0.0, 1e3, 0.0, 0.0], [100.0, 0.0, 1e3, 20.0, -40.0], [0.0, -300.0, 1e3, 5.0, 9.0]],
        dtype=torch.float64,
    )
    c = aligned_coordinates(cond, 20.0, 250.0)
    assert c.shape == (3, 900, 3)
    x = torch.arange(30, dtype=torch.float64).repeat_interleave(30) - 14.5  # flat a·30 + b
    y = torch.arange(30, dtype=torch.float64).repeat(30) - 14.5
    torch.testing.assert_close(c[0], torch.stack([torch.zeros(900), x, y], -1).double())
    torch.testing.assert_close(c[1, :, 1:], torch.stack([x - 2.25, y + 2.0], -1))  # X = 1 + 1.25
    torch.testing.assert_close(c[2, :, 1:], torch.stack([-(y + 3.3), x - 0.25], -1))  # u = -ŷ
    torch.testing.assert_close(c[:, 0, 0], torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64))
    e = torch.rand(3, 900, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = lhcb_cluster_metrics(e.numpy(), cond[:, 3:].numpy(), cond[:, :3].numpy(), pitch=20.0,
                             z_sm=250.0)  # fmt: skip
    for name, k in (("asym_long", 1), ("asym_trans", 2)):
        mine = (torch.where(c[..., k] >= 0, e, -e).sum(1) / e.sum(1)).numpy()
        np.testing.assert_allclose(mine, m[name], atol=1e-12)


def test_lhcb_aligned_prior_puts_the_mean_shower_where_the_conditions_say():
    """A toy training set of showers elongated along the track around the expected centre: the
    untrained generator's output (zero last layer) is that shower for new conditions."""
    g = torch.Generator().manual_seed(0)

    def conditions(n):
        p = torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([300, 150, 0])
        p[:, 2] = 1e3
        point = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 110
        return torch.cat([p, point], 1)

    def showers(cond):
        c = aligned_coordinates(cond, 20.0, 250.0)
        w = torch.exp(-0.5 * (c[..., 1] / 1.5) ** 2 - 0.5 * (c[..., 2] / 0.7) ** 2)
        return w / w.sum(1, keepdim=True)

    train = conditions(3000)
    table, incl_max = aligned_table(showers(train), train, 20.0, 250.0)
    assert table.shape == (8, 121, 121) and incl_max > 0
    label = Standardise().fit(train)
    gen = build_calo_models(
        "lhcb-conv", SMALL_CONV.replace(energy_sharing=True, aligned_prior=True)
    )["generator"]
    gen.set_aligned_prior(table.float(), incl_max, 20.0, 250.0, label.mean, label.std)
    torch.nn.init.zeros_(gen.up[-1].weight)
    torch.nn.init.zeros_(gen.up[-1].bias)
    new = conditions(20)
    f = gen(torch.randn(20, 16), label.forward(new).float()).reshape(20, -1).double()
    c = aligned_coordinates(new, 20.0, 250.0)
    s_mean, t_mean = (f * c[..., 1]).sum(1), (f * c[..., 2]).sum(1)
    assert s_mean.abs().max() < 0.1 and t_mean.abs().max() < 0.1
    s_width = ((f * c[..., 1] ** 2).sum(1) - s_mean**2).sqrt()
    t_width = ((f * c[..., 2] ** 2).sum(1) - t_mean**2).sqrt()
    assert (s_width - 1.5).abs().max() < 0.1 and (t_width - 0.7).abs().max() < 0.1
    assert (f - showers(new)).abs().sum(1).max() < 0.05  # L1 distance of the two showers


def test_voxel_noise_slope_scales_the_noise_with_energy():
    """``voxel_noise_slope``: log σ_v = ρ_v + κ_v·y₀; κ starts at 0 (σ₀ at every energy) and is
    learnt; with κ set, the logit noise at y₀ = ±1 differs by exp(2κ)."""
    from detgan.models.calo import VoxelNoise

    noise = VoxelNoise(3, 0.5, energy_slope=True)
    eps, logits = torch.ones(2, 3), torch.zeros(2, 3)
    y0 = torch.tensor([-1.0, 1.0])
    torch.testing.assert_close(noise(logits, eps, y0), torch.full((2, 3), 0.5))
    noise(logits, eps, y0).sum().backward()
    assert noise.energy_slope.grad is not None
    with torch.no_grad():
        noise.energy_slope.fill_(-0.5)
    out = noise(logits, eps, y0)
    torch.testing.assert_close(out[0] / out[1], torch.full((3,), math.exp(1.0)))
    cfg = CaloChallengeModelConfig(hidden=16, voxel_noise=0.5, voxel_noise_slope=True)
    gen = build_calo_models("calochallenge", cfg, CC_SIZES)["generator"]
    assert gen.voxel_noise.energy_slope.shape == (sum(CC_SIZES),)
    with pytest.raises(DetganError, match="voxel_noise_slope needs voxel_noise"):
        CaloChallengeModelConfig(voxel_noise_slope=True)


@pytest.mark.parametrize(
    "kind,config,sizes",
    [
        ("dense", DenseCaloConfig(latent_dim=10, hidden=32, voxel_noise=0.5), ATLAS_SIZES),
        ("calochallenge", CaloChallengeModelConfig(hidden=32, voxel_noise=0.5), CC_SIZES),
    ],
)
def test_voxel_noise_adds_one_learnt_noise_per_cell(kind, config, sizes):
    """z grows by one column per cell; those columns change the cells independently of the
    latent (the same latent, other ε → another shower with the same energy); σ₀ = 0 is off;
    σ is learnt."""
    gen = build_calo_models(kind, config, sizes)["generator"]
    n_cells, latent = sum(sizes), config.latent_dim
    assert gen.noise_dim == latent + n_cells
    off = build_calo_models(kind, config.replace(voxel_noise=0.0), sizes)["generator"]
    assert off.noise_dim == latent and not hasattr(off.voxel_noise, "log_sigma")
    torch.testing.assert_close(gen.voxel_noise.log_sigma.exp(), torch.full((n_cells,), 0.5))
    z, y = torch.randn(4, gen.noise_dim), torch.randn(4, 1)
    z2 = torch.cat([z[:, :latent], torch.randn(4, n_cells)], 1)
    a, b = gen(z, y), gen(z2, y)
    assert (a - b).abs().amax() > 1e-3  # other per-cell noise: another shower …
    torch.testing.assert_close(a.sum(1), b.sum(1))  # … sharing the same energy
    zero = torch.cat([z[:, :latent], torch.zeros(4, n_cells)], 1)
    gen.voxel_noise.log_sigma.data.fill_(-30.0)  # σ → 0: the noise columns no longer matter
    torch.testing.assert_close(gen(zero, y), gen(z, y))
    gen.voxel_noise.log_sigma.data.fill_(0.0)
    gen(z, y).pow(2).sum().backward()
    assert gen.voxel_noise.log_sigma.grad.abs().sum() > 0


def test_calochallenge_layer_noise_moves_the_layer_shares():
    """``layer_noise``: one more z column per layer share; other layer noise at the same
    latent and voxel noise → other layer energies, the same E_tot."""
    config = CaloChallengeModelConfig(
        hidden=32, condition_response=True, voxel_noise=0.5, layer_noise=0.5
    )
    gen = build_calo_models("calochallenge", config, CC_SIZES)["generator"]
    n_layers = len(CC_SIZES)
    assert gen.noise_dim == config.latent_dim + sum(CC_SIZES) + n_layers
    z, y = torch.randn(4, gen.noise_dim), torch.randn(4, 2)
    z2 = torch.cat([z[:, :-n_layers], torch.randn(4, n_layers)], 1)
    a, b = gen(z, y), gen(z2, y)

    def layers(f):
        return torch.stack([p.sum(1) for p in torch.split(f, list(CC_SIZES), 1)], 1)

    assert (layers(a) - layers(b)).abs().amax() > 1e-3
    torch.testing.assert_close(a.sum(1), torch.ones(4))
    torch.testing.assert_close(b.sum(1), torch.ones(4))
    for p_a, p_b in zip(torch.split(a, list(CC_SIZES), 1), torch.split(b, list(CC_SIZES), 1)):
        torch.testing.assert_close(p_a / p_a.sum(1, keepdim=True), p_b / p_b.sum(1, keepdim=True))


def test_energy_prior_interpolates_the_mean_shares_per_energy():
    """The table holds log mean shares at the training energies (exactly at discrete ones),
    interpolates linearly in y₀ between them and is constant beyond the ends; 0 before fit."""
    prior = EnergyPrior(3, n_points=8)
    torch.testing.assert_close(prior(torch.zeros(2)), torch.zeros(2, 3))
    y0 = torch.tensor([-1.0, -1.0, 0.0, 0.0, 1.0])
    shares = torch.tensor(
        [[0.6, 0.4, 0.0], [0.4, 0.6, 0.0], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]
    )
    prior.fit(y0, shares, floor=1e-6)
    at = prior(torch.tensor([-1.0, 0.0, 1.0, 3.0, -0.5])).exp()
    torch.testing.assert_close(at[0], torch.tensor([0.5, 0.5, 1e-6]), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(at[1], torch.tensor([0.2, 0.3, 0.5]), rtol=1e-4, atol=0)
    torch.testing.assert_close(at[3], at[2])  # constant beyond the last training energy
    mid = at[4]  # between −1 and 0: between the two tables (geometric interpolation)
    assert 0.2 < mid[0] < 0.5 and 1e-6 < mid[2] < 0.5
    assert EnergyPrior(0).add(torch.ones(2, 3), y0[:2]).equal(torch.ones(2, 3))


def test_calochallenge_priors_give_the_untrained_generator_the_mean_shower():
    """``layer_prior`` + ``voxel_prior`` with the network's own logits silenced: the
    generated layer shares and within-layer voxel shares are the training means at each
    E_inc; the network's logits still move them; the priors travel in the state dict."""
    config = CaloChallengeModelConfig(
        hidden=32, condition_response=True, layer_prior=True, voxel_prior=True
    )
    gen = build_calo_models("calochallenge", config, CC_SIZES)["generator"]
    g = torch.Generator().manual_seed(0)
    y0 = torch.tensor([-1.0, 1.0]).repeat_interleave(50)
    depth = torch.linspace(0.2, 0.8, len(CC_SIZES)) ** torch.where(y0 > 0, 0.5, 2.0)[:, None]
    cells = torch.cat(
        [torch.rand(100, n, generator=g) * depth[:, k : k + 1] for k, n in enumerate(CC_SIZES)],
        1,
    )
    gen.fit_priors(y0, cells)
    for head in (gen.logits, gen.response):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    y = torch.stack([torch.tensor([-1.0, 1.0]), torch.zeros(2)], 1)
    out = gen(torch.randn(2, gen.noise_dim), y).double()
    split = list(CC_SIZES)

    def layers(f):
        return torch.stack([p.sum(1) for p in torch.split(f, split, 1)], 1)

    ref = torch.stack(
        [layers(cells[y0 == v]) / cells[y0 == v].sum(1, keepdim=True) for v in (-1, 1)]
    )
    torch.testing.assert_close(layers(out), ref.mean(1).double(), rtol=1e-4, atol=1e-6)
    first = cells[y0 == 1, : CC_SIZES[0]]
    torch.testing.assert_close(
        out[1, : CC_SIZES[0]] / out[1, : CC_SIZES[0]].sum(),
        (first / first.sum(1, keepdim=True)).mean(0).double(),
        rtol=1e-4,
        atol=1e-6,
    )
    fresh = build_calo_models("calochallenge", config, CC_SIZES)["generator"]
    fresh.load_state_dict(gen.state_dict())
    torch.testing.assert_close(fresh.layer_prior.table, gen.layer_prior.table)
    torch.nn.init.normal_(gen.response.weight)
    assert (
        layers(gen(torch.randn(2, gen.noise_dim), y).double()) - layers(out)
    ).abs().amax() > 1e-3
    with pytest.raises(DetganError, match="layer_prior needs condition_response"):
        CaloChallengeModelConfig(layer_prior=True)


def test_dense_voxel_prior_starts_from_the_mean_fractions_per_energy():
    """dense ``voxel_prior``: with the network's output silenced the generated fractions are
    the mean training fractions at the event's energy."""
    config = DenseCaloConfig(latent_dim=10, hidden=32, voxel_prior=True)
    gen = build_calo_models("dense", config, ATLAS_SIZES)["generator"]
    g = torch.Generator().manual_seed(1)
    y0 = torch.tensor([-1.0, 1.0]).repeat_interleave(40)
    cells = torch.rand(80, sum(ATLAS_SIZES), generator=g) * (1 + 3 * (y0 > 0))[
        :, None
    ] ** torch.linspace(0, 1, 89)
    gen.fit_priors(y0, cells)
    last = [m for m in gen.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    out = gen(torch.randn(2, gen.noise_dim), torch.tensor([[-1.0], [1.0]])).double()
    frac = (cells / cells.sum(1, keepdim=True)).double()
    ref = torch.stack([frac[y0 == v].mean(0) for v in (-1.0, 1.0)])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-7)
    assert (ref[0] - ref[1]).abs().amax() > 1e-3  # the two energies have different showers


def test_calochallenge_critic_occupancy_sees_each_layers_filled_fraction():
    """``critic_occupancy``: one more critic input per layer, ≈ the fraction of its voxels
    above m (tanh(x / log 2) per voxel: 0 for empty voxels, ≈ 1 well above, soft near m);
    refused without MeV inputs."""
    config = CaloChallengeModelConfig(hidden=32, critic_mev_scale=1.0, critic_occupancy=True)
    critic = build_calo_models("calochallenge", config, CC_SIZES)["critic"]
    seen = []
    critic.net[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.zeros(2, sum(CC_SIZES))
    x[0, :4] = np.log1p(1000.0)  # layer 0: 4 of 8 voxels far above 1 MeV
    x[1, 8:48] = np.log1p(1000.0)  # layer 1: 40 of 160
    critic(x, torch.zeros(2, 1))
    occ = seen[0][:, sum(CC_SIZES) + len(CC_SIZES) : -1]
    torch.testing.assert_close(occ[:, :2], torch.tensor([[0.5, 0.0], [0.0, 0.25]]))
    assert occ[:, 2:].abs().sum() == 0
    off = build_calo_models("calochallenge", config.replace(critic_occupancy=False), CC_SIZES)
    assert critic.net[0].in_features == off["critic"].net[0].in_features + len(CC_SIZES)
    near = torch.zeros(1, sum(CC_SIZES))
    near[0, :8] = 0.5  # all of layer 0 just below log(2): soft, not yet counted as 1
    critic(near, torch.zeros(1, 1))
    torch.testing.assert_close(
        seen[1][0, sum(CC_SIZES) + len(CC_SIZES)], torch.tanh(near[0, 0] / np.log(2))
    )
    with pytest.raises(DetganError, match="critic_occupancy needs critic_mev_scale"):
        CaloChallengeModelConfig(critic_occupancy=True)


def test_unknown_model_kind_is_a_one_line_error():
    with pytest.raises(DetganError, match="model 'conv' unknown; use one of dense, lhcb-conv"):
        model_config_class("conv")


def test_config_rejects_bad_values():
    with pytest.raises(DetganError, match="channels must be at least 8"):
        LHCbConvConfig(channels=4)
    with pytest.raises(DetganError, match="aligned_prior needs energy_sharing"):
        LHCbConvConfig(aligned_prior=True)
    with pytest.raises(DetganError, match="condition_response needs per_layer=true"):
        CaloChallengeModelConfig(per_layer=False, condition_response=True)
    with pytest.raises(DetganError, match="total_response needs per_layer=true"):
        CaloChallengeModelConfig(per_layer=False, total_response=True)
