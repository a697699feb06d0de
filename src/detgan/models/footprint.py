"""Footprint networks: the paper's generator and critic, an AixNet-like constrainer, dense variants.

All networks work in *network units*: the footprint is (N, 9, 9) after the footprint transform
(a pure rescaling, so an untriggered station stays exactly 0) and the label is (N,) after the
label transform (standardised log10 E). They return per-event outputs; losses live in
:mod:`detgan.losses`. References: [E18] arXiv:1802.03325 (Tables 1 and 2), [EGW18] AixNet.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from detgan.config import Config, require

__all__ = [
    "FootprintModelConfig",
    "PaperGenerator",
    "PaperCritic",
    "AixNetConstrainer",
    "DenseConstrainer",
    "DenseGenerator",
    "DenseCritic",
    "trigger_gate",
    "build_footprint_models",
]

ARCHITECTURES = ("paper", "dense")
OUTPUTS = ("relu", "trigger", "gate")
CONSTRAINERS = ("aixnet", "dense")


@dataclasses.dataclass(frozen=True)
class FootprintModelConfig(Config):
    """Architecture of the footprint generator, critic and constrainer.

    ``architecture``: 'paper' (Tables 1/2 of [E18]) or 'dense' (MLPs, see :class:`DenseGenerator`).
    ``output``: 'relu' (paper), 'trigger' (stations are 0 or ≥ the trigger threshold, straight-
    through gradient) or 'gate' (dense only: a stochastic per-station on/off gate times an
    amplitude above threshold, see :class:`DenseGenerator`).
    ``critic_conditional``/``critic_sorted``: the dense critic also sees the label / the station
    values sorted in decreasing order. ``constrainer``: 'aixnet' (:class:`AixNetConstrainer`) or
    'dense' (:class:`DenseConstrainer`, ~50× cheaper on a CPU). ``cap_at_maximum``: the
    'gate' output is clipped at the largest training value (the simulator's signal cap).
    ``dropout`` and ``leaky_slope`` are not given in the paper (Keras defaults would be 0.3 for
    the slope); ours are a choice.
    """

    architecture: str = "paper"
    latent_dim: int = 80
    n_side: int = 9
    hidden: int = 256
    depth: int = 3
    output: str = "relu"
    critic_conditional: bool = False
    critic_sorted: bool = False
    dropout: float = 0.2
    leaky_slope: float = 0.2
    constrainer: str = "aixnet"
    cap_at_maximum: bool = False
    constrainer_width: int = 32

    def validate(self) -> None:
        require(
            self.architecture in ARCHITECTURES,
            f"architecture '{self.architecture}' unknown; use one of {', '.join(ARCHITECTURES)}",
        )
        require(
            self.output in OUTPUTS, f"output '{self.output}' unknown; use relu, trigger or gate"
        )
        require(
            self.output != "gate" or self.architecture == "dense",
            "output 'gate' needs architecture=dense",
        )
        require(self.latent_dim >= 1, "latent_dim must be at least 1")
        require(
            self.n_side == 9 or self.architecture == "dense",
            "the paper architecture needs n_side = 9; use architecture=dense",
        )
        require(self.hidden >= 1 and self.depth >= 1, "hidden and depth must be at least 1")
        require(0.0 <= self.dropout < 1.0, "dropout must lie in [0, 1)")
        require(
            self.constrainer in CONSTRAINERS,
            f"constrainer '{self.constrainer}' unknown; use aixnet or dense",
        )
        require(self.constrainer_width >= 4, "constrainer_width must be at least 4")


def trigger_gate(v: Tensor, threshold: float | Tensor) -> Tensor:
    """Station trigger with a straight-through gradient: y = v·1[v ≥ θ], ∂y/∂v := 1.

    v (N, ...) → (N, ...). The forward pass reproduces the detector (an untriggered station reads
    exactly 0, a triggered one at least θ); the backward pass is the identity, so the critic can
    switch stations on or off by moving v across θ.
    """
    hard = torch.where(v >= threshold, v, torch.zeros_like(v))
    return v + (hard - v).detach()


class PaperGenerator(nn.Module):
    """Table 1 of [E18]: (z (N, l), y (N,)) → footprint (N, 9, 9).

    linear(l + 1 → 80) ReLU; reshape 1×1×80; transposed convs 3×3 'valid' 64, 128, 128, 256 maps
    (1→3→5→7→9) each with batch normalisation and ReLU; conv 3×3 'same' to 1 map, ReLU (or the
    trigger gate of :func:`trigger_gate` with ``output='trigger'``).
    """

    def __init__(self, latent_dim: int = 80, output: str = "relu", threshold: float = 0.0) -> None:
        super().__init__()
        self.latent_dim, self.output = latent_dim, output
        self.noise_dim = latent_dim
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.dense = nn.Sequential(nn.Linear(latent_dim + 1, 80), nn.ReLU())
        layers: list[nn.Module] = []
        maps = [80, 64, 128, 128, 256]
        for cin, cout in zip(maps[:-1], maps[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 3), nn.BatchNorm2d(cout), nn.ReLU()]
        self.deconv = nn.Sequential(*layers)
        self.head = nn.Conv2d(256, 1, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.dense(torch.cat([z, y.reshape(-1, 1)], dim=1)).reshape(-1, 80, 1, 1)
        v = self.head(self.deconv(h)).squeeze(1)
        if self.output == "trigger":
            return trigger_gate(v, self.threshold)
        return torch.relu(v)


class PaperCritic(nn.Module):
    """Table 2 of [E18]: footprint (N, 9, 9) → score (N,); no batch normalisation (GP).

    convs 3×3 'same' with 64, 128, 128, 256 maps and LeakyReLU; global max pooling; dropout,
    linear 100, LeakyReLU; dropout, linear 1. The label argument is accepted and ignored (the
    paper's critic is unconditional; the constrainer enforces the label).
    """

    def __init__(self, dropout: float = 0.2, slope: float = 0.2) -> None:
        super().__init__()
        maps = [1, 64, 128, 128, 256]
        layers: list[nn.Module] = []
        for cin, cout in zip(maps[:-1], maps[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(slope)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256, 100),
            nn.LeakyReLU(slope),
            nn.Dropout(dropout),
            nn.Linear(100, 1),
        )

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.features(x.unsqueeze(1)).amax(dim=(2, 3))
        return self.head(h).squeeze(1)


class _DenseBlock(nn.Module):
    """Densely connected 3×3 convolutions: each layer sees the concatenation of all before it."""

    def __init__(self, channels: int, growth: int, layers: int, slope: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels + i * growth, growth, 3, padding=1), nn.LeakyReLU(slope)
            )
            for i in range(layers)
        )
        self.out_channels = channels + layers * growth

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = torch.cat([x, conv(x)], dim=1)
        return x


class AixNetConstrainer(nn.Module):
    """AixNet-like energy regressor [EGW18]: footprint (N, 9, 9) → label estimate (N,).

    The footprint variant of AixNet is not published; this compact version keeps its structure:
    a 3×3 convolution to ``width`` maps; two densely connected blocks of three 3×3 convolutions
    (growth ``width/2``), each followed by a 1×1 transition convolution halving the maps; global
    average *and* max pooling plus the summed input signal (a strong energy estimator); a dense
    head of 64 units. LeakyReLU throughout, no batch normalisation (it is also evaluated on
    generated batches, whose statistics differ).
    """

    def __init__(self, width: int = 32, slope: float = 0.2) -> None:
        super().__init__()
        growth = max(2, width // 2)
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.LeakyReLU(slope))
        blocks: list[nn.Module] = []
        channels = width
        for _ in range(2):
            block = _DenseBlock(channels, growth, 3, slope)
            channels = block.out_channels // 2
            blocks += [block, nn.Conv2d(block.out_channels, channels, 1), nn.LeakyReLU(slope)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Linear(2 * channels + 1, 64), nn.LeakyReLU(slope), nn.Linear(64, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.stem(x.unsqueeze(1)))
        pooled = [h.mean(dim=(2, 3)), h.amax(dim=(2, 3)), x.sum(dim=(1, 2)).unsqueeze(1) / 10.0]
        return self.head(torch.cat(pooled, dim=1)).squeeze(1)


class DenseConstrainer(nn.Module):
    """Dense energy regressor: footprint (N, n, n) → label estimate (N,).

    An MLP on the flat footprint, the sorted station values, the summed signal and the number of
    non-zero stations (both strong energy estimators), with LeakyReLU activations.
    """

    def __init__(self, n_side: int = 9, hidden: int = 128, slope: float = 0.2) -> None:
        super().__init__()
        n = n_side * n_side
        self.net = _mlp(2 * n + 2, hidden, 2, 1, nn.LeakyReLU(slope))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        ordered = torch.sort(flat, dim=1, descending=True).values
        summary = torch.stack([flat.sum(dim=1) / 10.0, (flat > 0).float().sum(dim=1) / 10.0], dim=1)
        return self.net(torch.cat([flat, ordered, summary], dim=1)).squeeze(1)


def _mlp(n_in: int, hidden: int, depth: int, n_out: int, act: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), act]
    layers.append(nn.Linear(hidden, n_out))
    return nn.Sequential(*layers)


def _label_features(y: Tensor) -> Tensor:
    """(N,) → (N, 3): y, y², y³ — a smooth basis for the per-energy mean footprint."""
    y = y.reshape(-1, 1)
    return torch.cat([y, y * y, y * y * y], dim=1)


class DenseGenerator(nn.Module):
    """Dense generator: (z (N, noise_dim), y (N,)) → footprint (N, n, n).

    h = A·φ(y) + b + MLP([z, φ(y)]) with φ(y) = (y, y², y³): the linear path is a learnt
    per-energy mean and the MLP generates the residual around it. Outputs:

    - 'relu': ReLU(h) (n² values); 'trigger': :func:`trigger_gate` (0 or ≥ θ);
    - 'gate': h holds a gate logit g and an amplitude a per station; the station reads
      x = 1[g + ℓ > 0] · (θ + softplus(a)), so it is exactly 0 or above the threshold θ. ℓ is
      logistic noise made from n² extra latent normals (ℓ = logit Φ(z')), so
      ``noise_dim = latent_dim + n²`` and the on/off decision near threshold is random, as in
      the detector. Gradients reach g through the straight-through Gumbel-sigmoid estimator
      (forward hard, backward σ(g + ℓ)). With a finite ``ceiling`` (the largest training
      value: the simulator caps a station at 10⁷ VEM) the amplitude is clipped there
      (straight-through gradient), which reproduces the pile-up of events at the cap.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        n_side: int = 9,
        hidden: int = 256,
        depth: int = 3,
        output: str = "trigger",
        threshold: float = 0.0,
        ceiling: float = math.inf,
    ) -> None:
        super().__init__()
        self.latent_dim, self.n_side, self.output = latent_dim, n_side, output
        n = n_side * n_side
        self.noise_dim = latent_dim + (n if output == "gate" else 0)
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("ceiling", torch.tensor(float(ceiling)), persistent=False)
        n_out = n * (2 if output == "gate" else 1)
        self.mean = nn.Linear(3, n_out)
        self.residual = _mlp(latent_dim + 3, hidden, depth, n_out, nn.LeakyReLU(0.2))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        phi = _label_features(y)
        h = self.mean(phi) + self.residual(torch.cat([z[:, : self.latent_dim], phi], dim=1))
        shape = (-1, self.n_side, self.n_side)
        if self.output == "gate":
            n = self.n_side * self.n_side
            noise = z[:, self.latent_dim :]
            logistic = torch.special.log_ndtr(noise) - torch.special.log_ndtr(-noise)
            soft = torch.sigmoid(h[:, :n] + logistic)
            gate = (soft > 0.5).to(soft.dtype) + soft - soft.detach()
            amplitude = self.threshold + nn.functional.softplus(h[:, n:])
            # The per-station signal cap: clip at the ceiling, straight-through gradient.
            amplitude = amplitude + (amplitude.clamp(max=self.ceiling) - amplitude).detach()
            return (gate * amplitude).reshape(shape)
        if self.output == "trigger":
            return trigger_gate(h.reshape(shape), self.threshold)
        return torch.relu(h).reshape(shape)


class DenseCritic(nn.Module):
    """Dense critic: (x (N, n, n), y (N,)) → score (N,); no normalisation layers (GP).

    Input features: the flat footprint; with ``sorted_values`` also the station values sorted in
    decreasing order (a permutation-invariant view of the signal distribution); with
    ``conditional`` also φ(y), so that the critic judges the footprint *given* its energy.
    """

    def __init__(
        self,
        n_side: int = 9,
        hidden: int = 256,
        depth: int = 3,
        conditional: bool = True,
        sorted_values: bool = True,
        slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.conditional, self.sorted_values = conditional, sorted_values
        n = n_side * n_side
        n_in = n * (2 if sorted_values else 1) + (3 if conditional else 0)
        self.net = _mlp(n_in, hidden, depth, 1, nn.LeakyReLU(slope))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        parts = [flat]
        if self.sorted_values:
            parts.append(torch.sort(flat, dim=1, descending=True).values)
        if self.conditional:
            if y is None:
                raise ValueError("conditional critic needs the label y")
            parts.append(_label_features(y))
        return self.net(torch.cat(parts, dim=1)).squeeze(1)


def build_footprint_models(
    cfg: FootprintModelConfig, threshold: float, ceiling: float = math.inf
) -> dict[str, nn.Module]:
    """The generator, critic and constrainer for ``cfg``; ``threshold`` θ and ``ceiling`` (the
    largest allowed station value, dense 'gate' output only) in network units."""
    if cfg.architecture == "paper":
        generator: nn.Module = PaperGenerator(cfg.latent_dim, cfg.output, threshold)
        critic: nn.Module = PaperCritic(cfg.dropout, cfg.leaky_slope)
    else:
        generator = DenseGenerator(
            cfg.latent_dim, cfg.n_side, cfg.hidden, cfg.depth, cfg.output, threshold, ceiling
        )
        critic = DenseCritic(
            cfg.n_side,
            cfg.hidden,
            cfg.depth,
            cfg.critic_conditional,
            cfg.critic_sorted,
            cfg.leaky_slope,
        )
    if cfg.constrainer == "aixnet":
        constrainer: nn.Module = AixNetConstrainer(cfg.constrainer_width, cfg.leaky_slope)
    else:
        constrainer = DenseConstrainer(cfg.n_side, 4 * cfg.constrainer_width, cfg.leaky_slope)
    return {"generator": generator, "critic": critic, "constrainer": constrainer}
