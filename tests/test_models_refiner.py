"""Trace networks: shapes, gradients, the refiner's options, two toy problems with answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detgan.models.refiner import (
    Refiner,
    RefinerModelConfig,
    TraceCritic,
    TraceRegressor,
    build_refiner_models,
    on_active_stations,
    station_signal,
    straight_through_gate,
)
from detgan.utils import DetganError

SMALL = RefinerModelConfig(channels=4, blocks=1, critic_width=8, regressor_width=8)


def _alive(refiner: Refiner) -> Refiner:
    """Random head weights and a positive bias: at toy sizes the final ReLU can start dead
    (and with ``input_skip`` the head starts at zero), which would hide the properties tested."""
    refiner.head.weight.data.normal_(0.0, 0.1)
    refiner.head.bias.data.fill_(1.0)
    return refiner


def _traces(n: int = 3, side: int = 9, bins: int = 80, active: float = 0.3) -> torch.Tensor:
    """Network-unit traces with a fraction of stations switched off (exact zeros)."""
    u = torch.rand(n, side, side, bins) * 2
    return u * (torch.rand(n, side, side, 1) < active)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"input_skip": True, "station_mask": True, "trigger_gate": True},
        {"critic_pulse_shape": True},
        {"refiner_levels": True, "station_mask": True},
        {"refiner_levels": True, "level_inputs": "context", "station_mask": True},
    ],
)
def test_shapes_and_every_parameter_gets_a_gradient(options):
    models = build_refiner_models(SMALL.replace(**options), threshold=10.0)
    _alive(models["generator"])
    regressor = TraceRegressor(8)
    u = _traces()
    refined = models["generator"](u)
    assert refined.shape == (3, 9, 9, 80) and (refined >= 0).all()
    score = models["critic"](refined)
    assert score.shape == (3,)
    assert regressor(u).shape == (3,)
    (score.sum() + regressor(u).sum()).backward()
    for name, module in {**models, "regressor": regressor}.items():
        for pname, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname}"
    assert all(p.grad.abs().sum() > 0 for p in models["generator"].parameters())


def test_critic_pulse_shape_sees_the_cumulative_linear_signal():
    """The second channel is Σ_{b' ≤ b} s_b' / S in [0, 1], ending at 1 on active stations and
    0 on empty ones; two traces with equal log-scaled maxima and integrals but different rise
    get different channels, so the critic can tell their rise times apart (the log-scaled
    channel holds the same values in a different order)."""
    critic = TraceCritic(8, pulse_shape=True)
    seen = []
    critic.encoder.time[0].register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    u = torch.zeros(1, 9, 9, 80)
    u[0, 4, 4, 10:14] = torch.tensor([1.0, 2.0, 1.0, 0.5])  # fast
    u[0, 4, 5, 10:14] = torch.tensor([0.5, 1.0, 2.0, 1.0])  # slow: same values, reordered
    critic(u)
    empty, active = seen  # on_active_stations: the empty station once, then the active ones
    assert empty.shape == (1, 2, 80) and not empty.any()
    cum = active[:, 1]
    assert torch.allclose(cum[:, -1], torch.ones(2)) and (cum >= 0).all() and (cum <= 1).all()
    assert cum[0, 11] > 0.5 > cum[1, 11]  # the fast pulse passed half its signal one bin early
    torch.testing.assert_close(active[:, 0].sort(1).values[0], active[:, 0].sort(1).values[1])


@pytest.mark.parametrize("mask", [False, True])
def test_refiner_levels_let_a_trace_depend_on_its_event(mask):
    """With ``refiner_levels`` the same trace is refined differently when the event's hottest
    station differs (its relative level changes); without, it is refined identically; the
    levels are a = log10(1 + S)/4 and (a − max a)/4, and 0 on stations without signal."""
    u = torch.zeros(2, 9, 9, 80)
    u[:, 4, 4, 10:14] = torch.tensor([0.5, 1.0, 0.8, 0.2])  # the same station in both events
    u[0, 2, 2, 10:20] = 3.0  # a bright hottest station in event 0 only
    for levels in (False, True):
        r = _alive(Refiner(SMALL.replace(refiner_levels=levels, station_mask=mask))).eval()
        out = r(u)
        assert out.shape == u.shape
        if mask:  # stations without signal stay exactly 0
            assert out[:, 0, 0].abs().sum() == 0
        same = torch.allclose(out[0, 4, 4], out[1, 4, 4])
        assert same != levels
    lv = r._levels(u).reshape(2, 9, 9, 2)
    a = math.log10(1 + float(station_signal(u)[1, 4, 4]))
    torch.testing.assert_close(lv[1, 4, 4], torch.tensor([a / 4, 0.0]))
    assert lv[0, 4, 4, 1] < 0 and lv[:, 0, 0].abs().sum() == 0


@pytest.mark.parametrize("kind, depends_on_event", [("absolute", False), ("relative", True)])
def test_level_inputs_keep_one_channel(kind, depends_on_event):
    """``level_inputs`` keeps one level channel: only the relative level ties a station's
    refined trace to the event's hottest station; an unknown choice is refused."""
    u = torch.zeros(2, 9, 9, 80)
    u[:, 4, 4, 10:14] = torch.tensor([0.5, 1.0, 0.8, 0.2])
    u[0, 2, 2, 10:20] = 3.0
    both = Refiner(SMALL.replace(refiner_levels=True))._levels(u)
    r = _alive(Refiner(SMALL.replace(refiner_levels=True, level_inputs=kind))).eval()
    assert r.lift.in_channels == 2
    torch.testing.assert_close(r._levels(u), both[:, [0] if kind == "absolute" else [1]])
    out = r(u)
    assert torch.allclose(out[0, 4, 4], out[1, 4, 4]) != depends_on_event
    with pytest.raises(DetganError, match="level_inputs 'mixed' unknown"):
        SMALL.replace(level_inputs="mixed")


def test_context_levels_see_the_neighbours_of_the_hottest_station():
    """``level_inputs=context`` adds the mean and the largest level of the 8 grid neighbours,
    each minus the station's own: the hottest station (relative level 0 in both events) is
    refined differently when a neighbour lights up; ``both`` cannot tell the two apart."""
    u = torch.zeros(2, 9, 9, 80)
    u[:, 4, 4, 10:20] = 3.0  # the hottest station, identical in both events
    u[0, 4, 5, 10:14] = 1.0  # a neighbour in event 0 only
    u[:, 0, 8, 10:14] = 1.0  # a distant station in both
    r = _alive(Refiner(SMALL.replace(refiner_levels=True, level_inputs="context"))).eval()
    assert r.lift.in_channels == 5
    lv = r._levels(u).reshape(2, 9, 9, 4) * 4
    a = torch.log10(1 + station_signal(u))
    torch.testing.assert_close(
        lv[..., :2], Refiner(SMALL.replace(refiner_levels=True))._levels(u).reshape(2, 9, 9, 2) * 4
    )
    torch.testing.assert_close(
        lv[0, 4, 4, 2:], torch.stack([a[0, 4, 5] / 8, a[0, 4, 5]]) - a[0, 4, 4]
    )
    torch.testing.assert_close(lv[1, 4, 4, 2:], -a[1, 4, 4].repeat(2))  # no neighbour with signal
    assert lv[:, 0, 0].abs().sum() == 0  # stations without signal stay 0
    out = r(u)
    assert not torch.allclose(out[0, 4, 4], out[1, 4, 4])
    torch.testing.assert_close(out[0, 0, 8], out[1, 0, 8])  # same trace, same neighbourhood
    both = _alive(Refiner(SMALL.replace(refiner_levels=True))).eval()(u)
    torch.testing.assert_close(both[0, 4, 4], both[1, 4, 4])


def test_paper_refiner_matches_table_3():
    """1 → 64 lift, four residual blocks of two 1×1×7 convolutions, 1×1×1 head."""
    r = Refiner(RefinerModelConfig())
    convs = [m for m in r.modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 1 + 8 + 1
    assert all(c.kernel_size == (7,) and c.out_channels == 64 for c in convs[1:-1])
    assert convs[-1].kernel_size == (1,) and convs[-1].out_channels == 1


def test_time_only_receptive_field():
    """Changing one station's trace changes no other station (kernels act along time only)."""
    r = _alive(Refiner(SMALL)).eval()
    u = _traces(1, active=1.0)
    v = u.clone()
    v[0, 2, 3] += 1.0
    diff = (r(u) - r(v)).abs().sum(-1)[0]
    assert diff[2, 3] > 0
    diff[2, 3] = 0
    assert diff.max() == 0


def test_on_active_stations_equals_dense_computation():
    r = _alive(Refiner(SMALL))
    flat = _traces(2).reshape(-1, 80)
    dense = r._refine_stations(flat)
    sparse = on_active_stations(r._refine_stations, flat)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    critic = TraceCritic(8)
    u = _traces(2)
    enc = critic.encoder
    h_dense = enc.station(enc.time(u.reshape(-1, 1, 80)).flatten(1))
    torch.testing.assert_close(
        on_active_stations(enc._station, u.reshape(-1, 80)), h_dense, rtol=1e-5, atol=1e-6
    )


def test_identity_skip_starts_at_the_identity_and_mask_keeps_zero_stations():
    r = Refiner(SMALL.replace(input_skip=True, station_mask=True))
    u = _traces()
    torch.testing.assert_close(r(u), u)
    r.head.bias.data.fill_(0.5)  # a refiner that adds signal everywhere ...
    out = r(u)
    off = u.amax(-1) == 0
    assert (out[off] == 0).all() and (out[~off] > 0).all()  # ... still leaves dead stations dead


def test_trigger_gate_zeroes_weak_stations_with_straight_through_gradient():
    u = torch.full((1, 1, 2, 10), math.log10(1 + 5.0), requires_grad=True)  # S = 50 VEM
    with torch.no_grad():
        u[0, 0, 1] = math.log10(1 + 20.0)  # S = 200 VEM
    gated = straight_through_gate(u, 100.0)
    assert (gated[0, 0, 0] == 0).all() and torch.equal(gated[0, 0, 1], u[0, 0, 1])
    gated.sum().backward()
    assert torch.equal(u.grad, torch.ones_like(u))
    torch.testing.assert_close(station_signal(u.detach())[0, 0], torch.tensor([50.0, 200.0]))


def test_config_errors_name_the_field():
    with pytest.raises(DetganError, match="kernel must be a positive odd number"):
        RefinerModelConfig(kernel=4)
    with pytest.raises(DetganError, match="unknown setting"):
        RefinerModelConfig().replace(chanels=3)


def test_regressor_learns_a_known_linear_relation():
    """Traces = a fixed pulse scaled by E; the regressor recovers y = log10 E (rms < 0.05)."""
    from detgan.studies.refine_study import RefineStudyConfig, predict_energy, train_regressor

    gen = torch.Generator().manual_seed(0)
    n, bins = 600, 20
    energy = 10 ** (torch.rand(n, generator=gen) * 2).numpy()  # 1..100
    pulse = torch.exp(-torch.arange(bins) / 4.0)
    lateral = torch.tensor([[0.2, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 0.2]])
    s = (
        torch.as_tensor(energy, dtype=torch.float32)[:, None, None, None]
        * 10
        * lateral[..., None]
        * pulse
    )
    u = torch.log10(1 + s)
    cfg = RefineStudyConfig(max_train=500, max_test=100, epochs=25, batch_size=32, lr=3e-3, width=8)
    model, stats = train_regressor(u[:500], energy[:500], cfg)
    rec = predict_energy(model, stats, u[500:])
    rms = np.sqrt(np.mean((np.log10(rec) - np.log10(energy[500:])) ** 2))
    assert rms < 0.05, rms


@pytest.mark.slow
def test_refiner_learns_a_known_gain_adversarially():
    """'data' = 'sim' × 2 (+0.301 in log10 units); a WGAN-GP-trained refiner learns the gain."""
    from detgan.studies.refine import refiner_problem
    from detgan.train import TrainConfig, Trainer

    gen = torch.Generator().manual_seed(1)
    n, bins = 2000, 16
    amp = 10 ** (torch.rand(n, 3, 3, 1, generator=gen) * 2)
    pulse = torch.exp(-((torch.arange(bins) - 5.0) ** 2) / 8.0)
    sim_vem = amp * pulse
    sim, data = torch.log10(1 + sim_vem[: n // 2]), torch.log10(1 + 2 * sim_vem[n // 2 :])
    cfg = SMALL.replace(input_skip=True, critic_width=16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        models = {"generator": Refiner(cfg), "critic": TraceCritic(16, bins)}
    train = TrainConfig(
        iterations=400,
        n_critic=5,
        batch_size=64,
        gp_weight=5.0,
        lr_generator=1e-3,
        lr_critic=1e-3,
        beta1=0.5,
        beta2=0.9,
        decay_generator=0,
        decay_critic=0,
    )
    Trainer(models, refiner_problem(sim, data), train, progress=False).run()
    with torch.no_grad():
        refined = 10 ** models["generator"](sim) - 1
    gain = (refined.sum(-1) / sim_vem[: n // 2].sum(-1)).median()
    assert 1.7 < gain < 2.3, gain
