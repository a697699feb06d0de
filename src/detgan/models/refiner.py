"""Trace networks: the residual refiner of [E18] Table 3, an AixNet-like critic and regressor.

All three work in *network units* u = log10(1 + s/VEM) of the recorded traces s, shape
(N, 9, 9, 80) (``airshower.md`` §16–17): an untriggered station is exactly 0 in both units.

- :class:`Refiner` ψ: (N, 9, 9, 80) → (N, 9, 9, 80), a deterministic sim → data-like map that
  keeps the event's physics label [E18 §2.4, arXiv:1802.03325; SimGAN, arXiv:1612.07828].
- :class:`TraceCritic` f: (N, 9, 9, 80) → (N,), and :class:`TraceRegressor` a: (N, 9, 9, 80) →
  (N,), both "closely resembling AixNet" [EGW18, Astropart. Phys. 97 (2018) 46]: per-station
  convolutions along time characterise each trace, spatial convolutions over the station grid
  combine the stations, global pooling and a dense head give one number per event.

The 1×1×7 3-D convolutions of Table 3 act along time only, so they are implemented exactly as
1-D convolutions over the 80 time bins with the 81 stations folded into the batch axis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detgan.config import Config, require

__all__ = [
    "RefinerModelConfig",
    "Refiner",
    "TraceEncoder",
    "TraceCritic",
    "TraceRegressor",
    "station_signal",
    "on_active_stations",
    "straight_through_gate",
    "build_refiner_models",
]


@dataclasses.dataclass(frozen=True)
class RefinerModelConfig(Config):
    """Architecture of the refiner, the trace critic and the energy regressor.

    Refiner: ``channels`` maps, ``blocks`` residual blocks of two convolutions with kernel
    ``kernel`` along time (Table 3: 64, 4, 7). Additions beyond Table 3 (all off in the
    'paper' preset): ``input_skip`` adds the input to the 1×1×1 head before the ReLU, so the
    untrained refiner is the identity; ``station_mask`` keeps stations without input signal at
    exactly 0; ``trigger_gate`` zeroes stations whose refined integral is below the data
    trigger threshold (straight-through gradient, see :func:`straight_through_gate`).
    Critic/regressor: ``critic_width``/``regressor_width`` maps; ``amplitude_features`` feeds
    log10 of each station's integral and peak to the spatial stage (amplitude-aware critic).
    ``critic_pulse_shape`` gives the critic's per-station convolutions a second input channel,
    the station's cumulative fraction of its linear signal Σ_{b' ≤ b} s_b' / S (0 → 1), whose
    crossings of 0.1, 0.5 and 0.9 are the rise and fall times the log-scaled trace hides.
    ``refiner_levels`` gives the refiner's lift two more input channels, constant along time:
    the station's level a = log10(1 + S) and its level relative to the event's hottest station,
    a − max a (both of the input trace, divided by 4). The sim → data correction of a pulse
    depends on the station's distance to the axis (its muon/EM mix, ``airshower.md`` §8, §10),
    which a single trace does not show but its level within the event does; with this option a
    station's refined trace depends on the event's hottest station too. ``level_inputs``
    (``both``, ``absolute``, ``relative``) keeps only one of the two channels (an ablation);
    ``context`` adds two channels of the station's grid neighbourhood (the 8 stations around it
    in the 9 × 9 grid, as the critic's 3 × 3 convolutions see it): the mean and the largest
    neighbour level, each minus the station's own level. For the hottest station, whose
    relative level is always 0, they say how steeply the signal falls off around it, i.e. how
    far the shower axis is — which sets its pulse shape (``airshower.md`` §10).
    """

    channels: int = 64
    blocks: int = 4
    kernel: int = 7
    input_skip: bool = False
    station_mask: bool = False
    trigger_gate: bool = False
    critic_width: int = 32
    regressor_width: int = 32
    amplitude_features: bool = True
    critic_pulse_shape: bool = False
    refiner_levels: bool = False
    level_inputs: str = "both"
    leaky_slope: float = 0.2

    def validate(self) -> None:
        require(self.channels >= 1 and self.blocks >= 0, "channels >= 1 and blocks >= 0 needed")
        require(self.kernel >= 1 and self.kernel % 2 == 1, "kernel must be a positive odd number")
        require(
            self.critic_width >= 4 and self.regressor_width >= 4,
            "critic_width and regressor_width must be at least 4",
        )
        require(0.0 <= self.leaky_slope < 1.0, "leaky_slope must lie in [0, 1)")
        require(
            self.level_inputs in _LEVEL_COLUMNS,
            f"level_inputs '{self.level_inputs}' unknown; use one of {', '.join(_LEVEL_COLUMNS)}",
        )


#: columns of :meth:`Refiner._levels` kept per ``level_inputs``: absolute a, relative a − max a,
#: neighbour mean − a, neighbour max − a
_LEVEL_COLUMNS = {"both": [0, 1], "absolute": [0], "relative": [1], "context": [0, 1, 2, 3]}


def _vem(u: Tensor) -> Tensor:
    """Network units → signal per bin in VEM, 10^u − 1 (u clamped at 12 against overflow)."""
    return torch.expm1(u.clamp(max=12.0) * math.log(10.0))


def station_signal(u: Tensor) -> Tensor:
    """Integral S = Σ_b (10^u_b − 1) of each station in VEM: (N, n, n, T) → (N, n, n)."""
    return _vem(u).sum(-1)


def on_active_stations(fn: Callable[[Tensor], Tensor], flat: Tensor) -> Tensor:
    """Apply a per-station map ``fn`` (K, T) → (K, F) only to stations with signal.

    flat (M, T) → (M, F). A station without signal (all zeros) gets fn(0), computed once, so
    the result equals ``fn(flat)`` exactly while the cost scales with the number of active
    stations (typically 10–20 of 81). Differentiable in ``flat``.
    """
    active = (flat.detach() != 0).any(-1)
    idx = active.nonzero().squeeze(1)
    zero = fn(flat.new_zeros(1, flat.shape[-1]))
    out = zero.expand(flat.shape[0], zero.shape[-1])
    if idx.numel() == 0:
        return out.contiguous()
    return out.index_copy(0, idx, fn(flat.index_select(0, idx)))


def straight_through_gate(u: Tensor, threshold: Tensor | float) -> Tensor:
    """Station trigger: u·1[S(u) ≥ θ] forwards, identity backwards. (N, n, n, T) → same.

    θ is in VEM (the data variant's ``trigger_threshold``). The forward pass reproduces the
    detector (a station below threshold reads exactly 0); the gradient passes unchanged, so the
    critic can switch stations on or off by moving their integral across θ.
    """
    keep = (station_signal(u.detach()) >= threshold).unsqueeze(-1).to(u.dtype)
    return u + (u * keep - u).detach()


class _ResBlock(nn.Module):
    """x + conv(ReLU(conv(x))) followed by ReLU, convolutions along time with 'same' padding."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=pad)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=pad)

    def forward(self, h: Tensor) -> Tensor:
        return torch.relu(h + self.conv2(torch.relu(self.conv1(h))))


class Refiner(nn.Module):
    """[E18] Table 3: sim traces (N, n, n, T) → refined traces (N, n, n, T), network units.

    conv 1×1×k lifting 1 → C maps, ReLU; ``blocks`` residual blocks (two 1×1×k convolutions,
    C maps, 'same' padding, ReLU, block input added); conv 1×1×1 to one map, ReLU. Options of
    :class:`RefinerModelConfig`: identity skip, station mask, trigger gate at ``threshold`` VEM.
    The physics label of the input event is untouched by construction.
    """

    def __init__(self, config: RefinerModelConfig | None = None, threshold: float = 0.0) -> None:
        super().__init__()
        self.config = c = config or RefinerModelConfig()
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.level_columns = _LEVEL_COLUMNS[c.level_inputs] if c.refiner_levels else []
        self.n_levels = len(self.level_columns)
        self.lift = nn.Conv1d(1 + self.n_levels, c.channels, c.kernel, padding=c.kernel // 2)
        self.body = nn.Sequential(*[_ResBlock(c.channels, c.kernel) for _ in range(c.blocks)])
        self.head = nn.Conv1d(c.channels, 1, 1)
        if c.input_skip:  # start at the identity map: ψ(u) = ReLU(u + 0)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:  # non-negative head on non-negative features: the output ReLU cannot start dead
            with torch.no_grad():
                self.head.weight.abs_()
                self.head.bias.abs_()

    def _refine_stations(self, flat: Tensor) -> Tensor:
        """(K, T [+ levels]) station traces → (K, T) refined (lift, residual blocks, head,
        ReLU); with ``refiner_levels`` the last columns are the station's levels, fed to the
        lift as constant channels."""
        t = flat.shape[-1] - self.n_levels
        h = flat[:, :t].unsqueeze(1)
        x = h
        if self.n_levels:
            x = torch.cat([h, flat[:, t:, None].expand(-1, -1, t)], 1)
        out = self.head(self.body(torch.relu(self.lift(x))))
        if self.config.input_skip:
            out = out + h
        return torch.relu(out).squeeze(1)

    def _levels(self, u: Tensor) -> Tensor:
        """(N, n, n, T) → (N·n·n, ≤ 4): a = log10(1 + S), a − max_event a, and the mean and the
        largest level of the 8 grid neighbours minus a, divided by 4 (the columns of
        ``level_inputs``); 0 on stations without signal (so they stay inactive for
        :func:`on_active_stations`)."""
        a = torch.log10(1.0 + station_signal(u.detach()).clamp_min(0.0))
        on = a > 0
        columns = [a, (a - a.amax((1, 2), keepdim=True)) * on]
        if self.n_levels > 2:
            side = a.shape[-1]
            nb = F.unfold(a[:, None], 3, padding=1).reshape(a.shape[0], 9, side, side)
            nb = torch.cat([nb[:, :4], nb[:, 5:]], 1)  # the 8 neighbours, not the station
            columns += [(nb.mean(1) - a) * on, (nb.amax(1) - a) * on]
        levels = torch.stack(columns, -1)[..., self.level_columns] / 4.0
        return levels.reshape(-1, self.n_levels)

    def forward(self, u: Tensor) -> Tensor:
        flat = u.reshape(-1, u.shape[-1])
        if self.n_levels:
            flat = torch.cat([flat, self._levels(u)], 1)
        if self.config.station_mask:  # stations without signal stay exactly 0 (and cost nothing)
            out = on_active_stations(self._refine_stations, flat)
            out = out * (flat.detach() != 0).any(-1, keepdim=True).to(out.dtype)
        else:
            out = self._refine_stations(flat)
        out = out.reshape(u.shape)
        if self.config.trigger_gate:
            out = straight_through_gate(out, self.threshold)
        return out


class TraceEncoder(nn.Module):
    """AixNet-like trunk [EGW18]: traces (N, n, n, T) → per-event features (N, 2·width [+ 2]).

    Per station (shared weights): three strided 1-D convolutions along time (k = 7, 5, 5,
    stride 2; width/2, width, width maps), flattened and mapped to ``width`` features. With
    ``amplitude_features`` the station's log10(S + 1) and peak value are appended. Spatial
    stage: three 3×3 'same' convolutions over the n × n grid, then global mean and max pooling;
    with ``amplitude_features`` the event's log10(1 + Σ S) and its hottest station's
    log10(1 + S) are appended too (so brightness errors of the hottest station are seen
    directly, not only through the convolutions). With ``pulse_shape`` the per-station
    convolutions also see the cumulative fraction of the station's linear signal.
    LeakyReLU activations, no batch normalisation (it would break the gradient penalty).
    """

    def __init__(
        self,
        width: int = 32,
        n_bins: int = 80,
        amplitude_features: bool = True,
        slope: float = 0.2,
        pulse_shape: bool = False,
    ) -> None:
        super().__init__()
        act = nn.LeakyReLU(slope)
        half = max(width // 2, 2)
        self.pulse_shape = pulse_shape
        self.time = nn.Sequential(
            nn.Conv1d(2 if pulse_shape else 1, half, 7, stride=2, padding=3),
            act,
            nn.Conv1d(half, width, 5, stride=2, padding=2),
            act,
            nn.Conv1d(width, width, 5, stride=2, padding=2),
            act,
        )
        t_out = n_bins
        for _ in range(3):
            t_out = (t_out + 1) // 2
        self.station = nn.Sequential(nn.Linear(width * t_out, width), act)
        self.amplitude_features = amplitude_features
        c_in = width + (2 if amplitude_features else 0)
        self.spatial = nn.Sequential(
            nn.Conv2d(c_in, width, 3, padding=1),
            act,
            nn.Conv2d(width, width, 3, padding=1),
            act,
            nn.Conv2d(width, width, 3, padding=1),
            act,
        )
        self.out_features = 2 * width + (2 if amplitude_features else 0)

    def _station(self, flat: Tensor) -> Tensor:
        """(K, T) station traces → (K, width) station features."""
        h = flat.unsqueeze(1)
        if self.pulse_shape:
            cumulative = _vem(flat.clamp_min(0.0)).cumsum(-1)
            h = torch.cat([h, (cumulative / cumulative[:, -1:].clamp_min(1e-6)).unsqueeze(1)], 1)
        return self.station(self.time(h).flatten(1))

    def forward(self, u: Tensor) -> Tensor:
        n, s1, s2, t = u.shape
        h = on_active_stations(self._station, u.reshape(-1, t)).reshape(n, s1, s2, -1)
        if not self.amplitude_features:
            h = self.spatial(h.permute(0, 3, 1, 2))
            return torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)
        signal = station_signal(u).clamp(min=0.0)
        amp = torch.log10(1.0 + signal)
        h = torch.cat([h, amp.unsqueeze(-1), u.amax(-1, keepdim=True)], dim=-1)
        h = self.spatial(h.permute(0, 3, 1, 2))
        event = [torch.log10(1.0 + signal.sum((1, 2))), amp.amax((1, 2))]
        return torch.cat([h.mean((2, 3)), h.amax((2, 3)), torch.stack(event, 1)], dim=1)


class TraceCritic(nn.Module):
    """Trace critic f: (N, n, n, T) → (N,) unbounded score; AixNet-like trunk + dense head."""

    def __init__(
        self,
        width: int = 32,
        n_bins: int = 80,
        amplitude_features: bool = True,
        slope: float = 0.2,
        pulse_shape: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = TraceEncoder(width, n_bins, amplitude_features, slope, pulse_shape)
        self.head = nn.Sequential(
            nn.Linear(self.encoder.out_features, width), nn.LeakyReLU(slope), nn.Linear(width, 1)
        )

    def forward(self, u: Tensor) -> Tensor:
        return self.head(self.encoder(u)).squeeze(1)


class TraceRegressor(TraceCritic):
    """AixNet-like energy regressor a: traces (N, n, n, T) → standardised log10 E (N,) [EGW18];
    the critic's architecture (trunk + dense head), trained by regression."""


def build_refiner_models(
    config: RefinerModelConfig, threshold: float = 0.0, n_bins: int = 80
) -> dict[str, nn.Module]:
    """``{'generator': Refiner, 'critic': TraceCritic}`` for the trainer; θ in VEM."""
    return {
        "generator": Refiner(config, threshold),
        "critic": TraceCritic(
            config.critic_width,
            n_bins,
            config.amplitude_features,
            config.leaky_slope,
            config.critic_pulse_shape,
        ),
    }
