"""Calorimeter WGAN networks: the dense energy-sharing WGAN of [K], the conditional convolutional
WGAN with embedded regressor of [C18] and a conditional WGAN for CaloChallenge voxel files.

All networks return per-event outputs; losses live in :mod:`detgan.losses` and the training
problems in :mod:`detgan.studies.calo`. References:

- [K] P. Klein, *WGANs for simulation of e.m. showers in the ATLAS calorimeter* (CERN report):
  ``paper_methods.md`` §4.
- [C18] V. Chekalina et al., arXiv:1812.01319 (LHCb ECAL): ``paper_methods.md`` §5.
- [GP17] I. Gulrajani et al., arXiv:1704.00028 (gradient penalty: no batch normalisation in
  any critic here).
- CaloChallenge 2022, arXiv:2410.21611 (voxel files, any binning).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detgan.config import Config, require

__all__ = [
    "MODEL_KINDS",
    "DenseCaloConfig",
    "LHCbConvConfig",
    "CaloChallengeModelConfig",
    "mlp",
    "layer_sums",
    "VoxelNoise",
    "EnergyPrior",
    "LayerEnergyFlow",
    "DenseCaloGenerator",
    "DenseCaloCritic",
    "LHCbConvGenerator",
    "aligned_coordinates",
    "aligned_table",
    "LHCbRegressor",
    "LHCbConvCritic",
    "CaloChallengeGenerator",
    "CaloChallengeCritic",
    "model_config_class",
    "build_calo_models",
]

MODEL_KINDS = ("dense", "lhcb-conv", "calochallenge")
LHCB_SIDE = 30  # the 30×30 image of [C18]
LHCB_CONDITIONS = 5  # (p_x, p_y, p_z, x, y)


@dataclasses.dataclass(frozen=True)
class DenseCaloConfig(Config):
    """Dense WGAN of [K]: ``depth`` hidden layers of ``hidden`` units (LeakyReLU ``leaky_slope``)
    in generator and critic, ``latent_dim`` Gaussian inputs. Paper: 100, 128, 3.

    Critic options (not in [K]; 0/False is the paper's critic on linear fractions):
    ``critic_log_scale`` s > 0: the critic sees log(1 + f/s) of the fractions f, so that cells
    carrying 10⁻³ of the energy (Presampler, Back) move its input as much as the core does;
    ``critic_layer_sums``: the critic also sees the per-layer sums of f (log-scaled likewise),
    so that the layer fractions need not be learnt from the cells.
    ``condition_layers`` (not in [K]): the label also carries one ±1 flag per layer (the layer
    has a cell above threshold or not); the generator gives the cells of flagged-empty layers no
    energy. At generation the flags are drawn from a training event of similar E_tot.
    ``voxel_noise`` σ₀ > 0 (not in [K]): see :class:`VoxelNoise`. ``voxel_prior`` (not in
    [K]): the softmax logits start from the log mean training fractions at the event's
    energy (:class:`EnergyPrior`).
    """

    latent_dim: int = 100
    hidden: int = 128
    depth: int = 3
    leaky_slope: float = 0.2
    critic_log_scale: float = 0.0
    critic_layer_sums: bool = False
    condition_layers: bool = False
    voxel_noise: float = 0.0
    voxel_prior: bool = False

    def validate(self) -> None:
        require(self.latent_dim >= 1, "latent_dim must be at least 1")
        require(self.hidden >= 1 and self.depth >= 1, "hidden and depth must be at least 1")
        require(0 <= self.leaky_slope < 1, "leaky_slope must lie in [0, 1)")
        require(self.critic_log_scale >= 0, "critic_log_scale must be >= 0 (0: linear input)")
        require(self.voxel_noise >= 0, "voxel_noise must be >= 0 (0: off)")


@dataclasses.dataclass(frozen=True)
class LHCbConvConfig(Config):
    """Convolutional WGAN of [C18]: ``latent_dim`` noise variables (paper 512); ``channels`` is
    the width of the 4×4 stage (paper 256; the later stages halve it: 128, 64, 32).

    ``energy_sharing`` (not in [C18]; as the dense model of [K]): the generator's 30×30 map is
    turned into fractions by a softmax over the 900 cells (rows sum to 1); the shower is
    E_tot · fractions with E_tot = |p| · r, r = E_tot/|p| drawn from a training event of
    similar |p| (two stages). The critic still sees Box-Cox + standardised MeV images.

    ``aligned_prior`` (with ``energy_sharing``; not in [C18]): the softmax starts from the mean
    training shower *seen from each event's expected centre along its direction* (a table over
    inclination and the (s, t) frame of the cluster metrics, :func:`aligned_coordinates`)
    instead of one mean image, so the untrained generator already puts the shower where the
    conditions say and elongates it along the track; the network learns the fluctuations.
    """

    latent_dim: int = 512
    channels: int = 256
    leaky_slope: float = 0.2
    energy_sharing: bool = False
    aligned_prior: bool = False

    def validate(self) -> None:
        require(self.latent_dim >= 1, "latent_dim must be at least 1")
        require(self.channels >= 8, "channels must be at least 8 (it is halved three times)")
        require(0 <= self.leaky_slope < 1, "leaky_slope must lie in [0, 1)")
        require(
            self.energy_sharing or not self.aligned_prior,
            "aligned_prior needs energy_sharing (it is the start of the softmax)",
        )


@dataclasses.dataclass(frozen=True)
class CaloChallengeModelConfig(Config):
    """Conditional WGAN for CaloChallenge voxels (any binning). ``per_layer``: energy is shared
    hierarchically (layer energies, then a softmax within each layer) instead of one softmax over
    all voxels. ``frac_scale`` s: the critic sees log(1 + (E_voxel/E_inc)/s).
    ``critic_layer_fractions``: the critic's layer inputs are log(1 + (E_l/E_inc)/s) per layer
    and log(1 + (E_tot/E_inc)/s) instead of the per-layer sums of the voxel inputs (which
    neither equal the layer energies nor show the total response). ``total_response`` (with
    ``per_layer``): one total response E_tot/E_inc = softplus(a) shared among the layers by a
    softmax, instead of one independent softplus per layer (whose sum fluctuates L times).
    ``critic_mev_scale`` m > 0: the critic sees log(1 + E_voxel/m), E in MeV, instead of
    fractions (and its layer inputs log(1 + E_l/m), log(1 + E_tot/m)): the voxel threshold
    E_min then maps to the same input at every E_inc, as in the evaluation's MeV histograms.
    ``condition_response`` (with ``per_layer``): generator and critic are conditioned on
    (log E_inc, log E_tot) and the generator shares E_tot exactly (softmax over the layers, then
    within each layer: rows sum to 1, as in [K]); E_tot is drawn at generation from the
    training events' responses E_tot/E_inc at the nearest E_inc (two stages, as in CaloFlow's
    separate layer-energy model, arXiv:2106.05285). ``condition_layers`` (with
    ``condition_response``): the label also carries which layers have energy above E_min
    (±1 per layer), drawn at generation from the same training event as E_tot; the generator
    gives the empty layers no energy (their layer logits are masked), so the fraction of
    showers with an empty layer is that of the training data at each E_inc.
    ``voxel_noise`` σ₀ > 0: see :class:`VoxelNoise`; ``layer_noise`` σ₀ > 0: the same on the
    response logits (with ``condition_response``: one per layer share), for the heavy tails of
    the layer energies. ``layer_prior`` (with ``condition_response``) / ``voxel_prior``: the
    layer-share / voxel logits start from the log mean training shares at the event's E_inc
    (:class:`EnergyPrior`; voxel shares of their layer with ``per_layer``).
    ``critic_occupancy`` (with ``critic_mev_scale`` m, best m = E_min): the critic also sees
    each layer's occupancy, the mean over its voxels of tanh(x / log 2), x = log(1 + E/m):
    ≈ the fraction of voxels above m, with a gradient for the voxels near it (the sparsity
    that the voxel inputs show only one by one).
    ``layer_flow`` (with ``condition_layers``): the label also carries each layer's share of
    E_tot and the generator shares E_tot exactly so (it only shares within the layers); at
    generation E_tot and the shares come from a separately trained stage-1 flow
    (:class:`LayerEnergyFlow`, ``layer_flow_steps`` Adam steps before the WGAN) given E_inc
    and the drawn empty layers, as CaloFlow's flow I (arXiv:2106.05285).
    ``voxel_noise_slope`` (with ``voxel_noise``): each voxel's noise scale also depends on
    log E_inc (:class:`VoxelNoise` ``energy_slope``)."""

    latent_dim: int = 64
    hidden: int = 256
    depth: int = 3
    per_layer: bool = True
    frac_scale: float = 1e-4
    leaky_slope: float = 0.2
    critic_layer_fractions: bool = False
    total_response: bool = False
    critic_mev_scale: float = 0.0
    condition_response: bool = False
    condition_layers: bool = False
    voxel_noise: float = 0.0
    layer_noise: float = 0.0
    layer_prior: bool = False
    voxel_prior: bool = False
    critic_occupancy: bool = False
    layer_flow: bool = False
    layer_flow_steps: int = 8000
    voxel_noise_slope: bool = False

    def validate(self) -> None:
        require(self.latent_dim >= 1, "latent_dim must be at least 1")
        require(
            self.condition_layers or not self.layer_flow,
            "layer_flow needs condition_layers=true (and condition_response=true)",
        )
        require(
            not self.layer_flow or not (self.layer_prior or self.layer_noise > 0),
            "layer_flow gives the layer energies; drop layer_prior and layer_noise",
        )
        require(self.layer_flow_steps >= 1, "layer_flow_steps must be at least 1")
        require(
            self.voxel_noise > 0 or not self.voxel_noise_slope,
            "voxel_noise_slope needs voxel_noise > 0",
        )
        require(
            self.condition_response or not self.layer_prior,
            "layer_prior needs condition_response=true",
        )
        require(
            self.critic_mev_scale > 0 or not self.critic_occupancy,
            "critic_occupancy needs critic_mev_scale > 0 (the threshold E_min in MeV)",
        )
        require(self.hidden >= 1 and self.depth >= 1, "hidden and depth must be at least 1")
        require(self.frac_scale > 0, "frac_scale must be positive")
        require(self.voxel_noise >= 0, "voxel_noise must be >= 0 (0: off)")
        require(self.layer_noise >= 0, "layer_noise must be >= 0 (0: off)")
        require(self.per_layer or not self.total_response, "total_response needs per_layer=true")
        require(self.critic_mev_scale >= 0, "critic_mev_scale must be >= 0 (0: fractions)")
        require(
            self.per_layer or not self.condition_response, "condition_response needs per_layer=true"
        )
        require(
            self.condition_response or not self.condition_layers,
            "condition_layers needs condition_response=true",
        )
        require(0 <= self.leaky_slope < 1, "leaky_slope must lie in [0, 1)")

    def label_width(self, n_layers: int) -> int:
        """Label columns: (log E_inc), (log E_inc, log E_tot) with ``condition_response``,
        plus one occupancy flag per layer with ``condition_layers`` and one share of E_tot per
        layer with ``layer_flow``."""
        return self.n_conditions + n_layers * (int(self.condition_layers) + int(self.layer_flow))

    @property
    def n_conditions(self) -> int:
        """Label columns: (log E_inc) or, with ``condition_response``, (log E_inc, log E_tot)."""
        return 2 if self.condition_response else 1

    @property
    def critic_scale(self) -> float:
        """s of the critic's input log(1 + v/s): MeV when ``critic_mev_scale`` > 0, else a
        fraction of E_inc."""
        return self.critic_mev_scale if self.critic_mev_scale > 0 else self.frac_scale


def mlp(n_in: int, hidden: int, depth: int, n_out: int, slope: float = 0.2) -> nn.Sequential:
    """``depth`` × (Linear(·, hidden), LeakyReLU(slope)), then Linear(hidden, n_out)."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.LeakyReLU(slope)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _as_2d(y: Tensor) -> Tensor:
    return y.reshape(len(y), -1)


def layer_sums(t: Tensor, layer_sizes: Sequence[int]) -> Tensor:
    """(N, V) values in flat layer order → (N, L) sums per layer."""
    return torch.stack([p.sum(1) for p in torch.split(t, list(layer_sizes), dim=1)], 1)


class VoxelNoise(nn.Module):
    """Independent noise per cell on a generator's softmax logits (not in [K]):
    logits + σ_v·ε_v, ε ~ N(0, 1) one per cell, σ_v = exp(ρ_v) learnt, σ_v = σ₀ at the start
    (also used with one "cell" per layer share, ``layer_noise``).

    A softmax over the output of one MLP of a ``latent_dim``-dimensional noise gives cell
    energies that vary together (a low-rank family of showers); real showers fluctuate cell by
    cell (a log-normal factor per cell here). The ε are the last ``n_cells`` columns of the
    generator's z, so a seeded z still fixes the shower. σ₀ = 0: off (no columns, no weights).
    ``energy_slope``: log σ_v = ρ_v + κ_v·y₀ with y₀ the standardised log energy of the event
    and κ_v learnt from 0 — fluctuations that shrink (or grow) with energy, as sampling
    fluctuations do (∝ 1/√E): a fixed σ_v spreads few-GeV showers over too many voxels.
    """

    def __init__(self, n_cells: int, sigma0: float, energy_slope: bool = False) -> None:
        super().__init__()
        self.n_cells = n_cells if sigma0 > 0 else 0
        self.energy_slope = None
        if self.n_cells:
            self.log_sigma = nn.Parameter(torch.full((n_cells,), math.log(sigma0)))
            if energy_slope:
                self.energy_slope = nn.Parameter(torch.zeros(n_cells))

    def split(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """z (N, L + V) → (latent (N, L), ε (N, V)); ε None when off."""
        if not self.n_cells:
            return z, None
        return z[:, : -self.n_cells], z[:, -self.n_cells :]

    def forward(self, logits: Tensor, eps: Tensor | None, y0: Tensor | None = None) -> Tensor:
        if eps is None:
            return logits
        log_sigma = self.log_sigma
        if self.energy_slope is not None:
            log_sigma = log_sigma + self.energy_slope * y0[:, None]
        return logits + log_sigma.exp() * eps


class EnergyPrior(nn.Module):
    """A table of logits against the (standardised) conditioning energy y₀, added to a
    generator's softmax logits (not in [K]): log of the mean training shares at ``n_points``
    energies, interpolated linearly in y₀ and held constant beyond the ends, so the untrained
    generator already has the mean shower of each energy and the network learns the event's
    deviations from it. Zero (no effect) until :meth:`fit`; ``n_cells`` 0: off.

    Meant for energies that are rare in training (CaloChallenge dataset 1 has 356 of 50 000
    showers at 4 TeV, where the generated layer-12 share was half the reference's); measured
    in docs/results.md (session 7): the adversarial training still pulls them away."""

    def __init__(self, n_cells: int, n_points: int = 32) -> None:
        super().__init__()
        self.n_cells = n_cells
        if n_cells:
            self.register_buffer("grid", torch.linspace(-1.0, 1.0, n_points))
            self.register_buffer("table", torch.zeros(n_points, n_cells))

    @torch.no_grad()
    def fit(self, y0: Tensor, shares: Tensor, floor: float = 1e-6) -> None:
        """Set the table from training events: y₀ (N,), shares (N, K) ≥ 0 (e.g. each layer's
        fraction of the event energy; NaN where an event does not count, e.g. a voxel's share of
        an empty layer). The grid spans the range of y₀; each grid point gets the log of the
        mean shares of the events nearest to it in y₀ (those closer to it than to any other
        point, or, where none are, the nearest event)."""
        if not self.n_cells:
            return
        y0, shares = y0.float().cpu(), shares.float().cpu()
        lo, hi = float(y0.min()), float(y0.max())
        grid = torch.linspace(lo, hi if hi > lo else lo + 1.0, len(self.grid))
        nearest = (y0[:, None] - grid[None, :]).abs().argmin(1)
        table = torch.empty(len(grid), shares.shape[1])
        for k in range(len(grid)):
            rows = nearest == k
            if not rows.any():
                dist = (y0 - grid[k]).abs()
                rows = dist == dist.min()
            table[k] = torch.log(torch.nanmean(shares[rows], 0).nan_to_num(0.0) + floor)
        self.grid.copy_(grid)
        self.table.copy_(table)

    def forward(self, y0: Tensor) -> Tensor:
        """(N,) standardised energies → (N, K) interpolated logits."""
        g = self.grid
        i = torch.searchsorted(g, y0.contiguous().clamp(g[0], g[-1])).clamp(1, len(g) - 1)
        w = ((y0 - g[i - 1]) / (g[i] - g[i - 1])).clamp(0.0, 1.0)[:, None]
        return (1.0 - w) * self.table[i - 1] + w * self.table[i]

    def add(self, logits: Tensor, y0: Tensor) -> Tensor:
        """``logits`` + the table at y₀ (``logits`` unchanged when off)."""
        return logits + self(y0) if self.n_cells else logits


class LayerEnergyFlow(nn.Module):
    """Stage 1 of ``layer_flow`` (not in [K]): a conditional normalising flow for a shower's
    L layer energies, in the spirit of CaloFlow's flow I (arXiv:2106.05285); here affine
    couplings (RealNVP, Dinh et al., arXiv:1605.08803) whose scale and shift are MLPs of the
    untouched coordinates and the condition c = (standardised log E_inc, ±1 occupancy flag per
    layer; the flags are drawn with the response table, :mod:`detgan.studies.calo`).

    Coordinates: u_l = (log(E_l/E_inc) − μ_l)/σ_l for the layers with energy (μ, σ over the
    training events where the layer has energy, set by :meth:`fit_scales`); an empty layer's
    u_l is N(0, 1) noise in training and ignored in sampling (its flag says it is empty). The
    couplings alternate between partitions of the layers by the bits of their index, so every
    pair of layers is split by some coupling; the last linear layer of each coupling starts at
    zero (identity flow)."""

    def __init__(self, n_layers: int, hidden: int = 128, couplings: int = 8) -> None:
        super().__init__()
        self.n_layers = n_layers
        for name, value in (("mean", 0.0), ("std", 1.0)):
            self.register_buffer(name, torch.full((n_layers,), value, dtype=torch.float64))
            self.register_buffer(f"energy_{name}", torch.tensor(value, dtype=torch.float64))
        idx = torch.arange(n_layers)
        bits = max(1, math.ceil(math.log2(max(n_layers, 2))))
        masks = [((idx >> ((k // 2) % bits)) & 1) ^ (k % 2) for k in range(couplings)]
        self.register_buffer("masks", torch.stack(masks).float())
        self.nets = nn.ModuleList(
            mlp(2 * n_layers + 1, hidden, 2, 2 * n_layers) for _ in range(couplings)
        )
        for net in self.nets:
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)

    @torch.no_grad()
    def fit_scales(self, e_inc: Tensor, layers: Tensor) -> None:
        """μ, σ of log(E_l/E_inc) over the events with energy in layer l, and of log10 E_inc."""
        e_inc, layers = e_inc.double().cpu(), layers.double().cpu()
        log_e = torch.log10(e_inc)
        self.energy_mean.fill_(log_e.mean())
        self.energy_std.fill_(log_e.std().clamp_min(1e-6) if len(log_e) > 1 else 1.0)
        log_f = torch.log(layers.clamp_min(1e-300) / e_inc[:, None])
        for k in range(self.n_layers):
            v = log_f[layers[:, k] > 0, k]
            self.mean[k] = v.mean() if len(v) else 0.0
            self.std[k] = v.std().clamp_min(1e-3) if len(v) > 1 else 1.0

    def encode(self, e_inc: Tensor, layers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(E_inc (N,), layer energies (N, L)) → (u (N, L) float, c (N, 1 + L) float,
        occupied (N, L) bool); u of empty layers is 0 (fill them before :meth:`log_prob`)."""
        e_inc, layers = e_inc.double(), layers.double()
        filled = layers > 0
        log_f = torch.log(torch.where(filled, layers, 1.0) / e_inc[:, None])
        u = torch.where(filled, (log_f - self.mean) / self.std, 0.0)
        return u.float(), self.condition(e_inc, filled), filled

    def condition(self, e_inc: Tensor, filled: Tensor) -> Tensor:
        """c (N, 1 + L): standardised log10 E_inc and +1/−1 per layer with energy / empty."""
        y0 = (torch.log10(e_inc.double()) - self.energy_mean) / self.energy_std
        return torch.cat([y0[:, None], 2.0 * filled.double() - 1.0], 1).float()

    def _scale_shift(self, k: int, u: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        keep = self.masks[k]
        s, t = self.nets[k](torch.cat([u * keep, c], 1)).chunk(2, 1)
        return 2.0 * torch.tanh(s / 2.0) * (1.0 - keep), t * (1.0 - keep)

    def log_prob(self, u: Tensor, c: Tensor) -> Tensor:
        """(N,) log density of the coordinates u (N, L) given c (N, 1 + L)."""
        log_det = u.new_zeros(len(u))
        for k in range(len(self.nets)):
            s, t = self._scale_shift(k, u, c)
            u = u * s.exp() + t
            log_det = log_det + s.sum(1)
        return log_det - 0.5 * (u**2).sum(1) - 0.5 * self.n_layers * math.log(2 * math.pi)

    @torch.no_grad()
    def draw(self, e_inc: Tensor, filled: Tensor, generator: torch.Generator) -> Tensor:
        """(N, L) layer energies (units of E_inc) for E_inc (N,) and the layers with energy
        ``filled`` (N, L) bool; empty layers get 0."""
        c = self.condition(e_inc, filled)
        u = torch.randn(len(c), self.n_layers, generator=generator).to(c)
        for k in reversed(range(len(self.nets))):
            s, t = self._scale_shift(k, u, c)
            u = (u - t) * (-s).exp()
        layers = torch.exp(u.double() * self.std + self.mean) * e_inc.double()[:, None]
        return torch.where(filled, layers, 0.0)


# ------------------------------------------------------------------------------------- [K]
class DenseCaloGenerator(nn.Module):
    """Dense generator of [K]: (z (N, L), y (N, C)) → energy fractions (N, V), rows sum to 1.

    f = softmax(MLP([z, y])); the shower is E · f with E the conditional (total cluster)
    energy, so energy is conserved exactly by construction. Thresholds are applied after
    generation, as for the reference.
    """

    def __init__(
        self,
        n_cells: int,
        config: DenseCaloConfig,
        n_conditions: int = 1,
        layer_sizes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        c = config
        self.voxel_noise = VoxelNoise(n_cells, c.voxel_noise)
        self.voxel_prior = EnergyPrior(n_cells if c.voxel_prior else 0)
        self.noise_dim, self.n_cells = c.latent_dim + self.voxel_noise.n_cells, n_cells
        self.net = mlp(c.latent_dim + n_conditions, c.hidden, c.depth, n_cells, c.leaky_slope)
        self.n_flags = len(layer_sizes) if c.condition_layers else 0
        require(
            not self.n_flags or sum(layer_sizes) == n_cells,
            f"condition_layers needs layer sizes summing to {n_cells} cells",
        )
        sizes = torch.tensor([int(n) for n in layer_sizes], dtype=torch.long)
        layer = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        self.register_buffer("layer_of_cell", layer, persistent=False)

    def fit_priors(self, y0: Tensor, cells: Tensor) -> None:
        """Set ``voxel_prior`` from the training showers: standardised log energy y₀ (N,) and
        cell energies (N, V)."""
        cells = cells.double()
        self.voxel_prior.fit(y0, cells / cells.sum(1, keepdim=True).clamp_min(1e-30))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        y = _as_2d(y)
        z, eps = self.voxel_noise.split(z)
        logits = self.net(torch.cat([z, y], 1))
        logits = self.voxel_noise(self.voxel_prior.add(logits, y[:, 0]), eps)
        if self.n_flags:  # cells of layers flagged empty (−1) get no energy
            empty = (y[:, -self.n_flags :] < 0)[:, self.layer_of_cell]
            logits = logits.masked_fill(empty, -1e9)
        return torch.softmax(logits, dim=1)


class DenseCaloCritic(nn.Module):
    """Dense critic of [K]: (x (N, V) fractions, y (N, C)) → (N,) scores, linear output.

    Input features u = [g(x), g(S x), y] with g(f) = log(1 + f/s) when ``critic_log_scale``
    s > 0 (else g(f) = f) and S x the (N, L) per-layer sums, present only with
    ``critic_layer_sums`` (``layer_sizes`` then gives the cells per layer in flat order).
    """

    def __init__(
        self,
        n_cells: int,
        config: DenseCaloConfig,
        n_conditions: int = 1,
        layer_sizes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        c = config
        self.log_scale = float(c.critic_log_scale)
        self.layer_sizes = [int(n) for n in layer_sizes] if c.critic_layer_sums else []
        require(
            not c.critic_layer_sums or sum(self.layer_sizes) == n_cells,
            f"critic_layer_sums needs layer sizes summing to {n_cells} cells",
        )
        n_in = n_cells + len(self.layer_sizes) + n_conditions
        self.net = mlp(n_in, c.hidden, c.depth, 1, c.leaky_slope)

    def _scaled(self, f: Tensor) -> Tensor:
        return torch.log1p(f.clamp_min(0) / self.log_scale) if self.log_scale > 0 else f

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.reshape(len(x), -1)
        parts = [self._scaled(x)]
        if self.layer_sizes:
            parts.append(self._scaled(layer_sums(x, self.layer_sizes)))
        return self.net(torch.cat([*parts, _as_2d(y)], 1)).squeeze(1)


# ------------------------------------------------------------------------------------ [C18]
#: ``aligned_prior`` table bins: inclination |p_xy|/p_z, s (along the track), t (across); the
#: s and t bins are 0.25 cells wide over ±``ALIGNED_HALF`` cells.
ALIGNED_BINS = (8, 121, 121)
ALIGNED_HALF = 15.0
_CELL_XY = torch.stack(
    torch.meshgrid(torch.arange(LHCB_SIDE) - 14.5, torch.arange(LHCB_SIDE) - 14.5, indexing="ij"),
    -1,
).reshape(-1, 2)  # cell centres (900, 2) in cells, flat index a·30 + b, x = a − 14.5


def aligned_coordinates(cond: Tensor, pitch: float | Tensor, z_sm: float | Tensor) -> Tensor:
    """(N, 900, 3) (inclination, s, t) of every cell for raw LHCb conditions (N, 5) =
    (p_x, p_y, p_z, x₀, y₀) with x₀, y₀, ``pitch`` and ``z_sm`` in one length unit: s, t (cells)
    are the cell centre's coordinates along u = p_xy/|p_xy| (u = (1, 0) at normal incidence)
    and across it, from the expected centre P = (x₀ + z_sm p_x/p_z, y₀ + z_sm p_y/p_z)/pitch,
    as in :func:`detgan.observables_lhcb.lhcb_cluster_metrics`; inclination = |p_xy|/p_z."""
    pxy, pz = cond[:, :2], cond[:, 2:3].clamp_min(1e-9)
    centre = (cond[:, 3:5] + z_sm * pxy / pz) / pitch
    norm = pxy.norm(dim=1, keepdim=True)
    u = torch.where(norm > 0, pxy / norm.clamp_min(1e-30), pxy.new_tensor([1.0, 0.0]))
    d = _CELL_XY.to(cond)[None] - centre[:, None]
    s = (d * u[:, None]).sum(-1)
    t = d[..., 1] * u[:, None, 0] - d[..., 0] * u[:, None, 1]
    return torch.stack([(norm / pz).expand_as(s), s, t], -1)


def _aligned_unit(coords: Tensor, incl_max: float | Tensor) -> Tensor:
    """:func:`aligned_coordinates` output mapped to [0, 1] per axis: 0 … 1 spans the table's
    first to last bin centre (inclination 0 … incl_max, s and t −ALIGNED_HALF … +ALIGNED_HALF;
    ``grid_sample``'s ``align_corners=True`` convention)."""
    return torch.cat([coords[..., :1] / incl_max, (coords[..., 1:] / ALIGNED_HALF + 1) / 2], -1)


def aligned_table(
    fractions: Tensor,
    cond: Tensor,
    pitch: float,
    z_sm: float,
    shrink: float = 4.0,
    chunk: int = 1000,
) -> tuple[Tensor, float]:
    """The mean training fraction per (inclination, s, t) bin, shape :data:`ALIGNED_BINS`
    (float64; cells beyond the table count in its edge bins), for fractions (N, 900) and raw
    conditions (N, 5); and the inclination range, the 99 % quantile. Sparse bins (few events
    at large inclination) are pulled towards the mean over all inclinations as if it had been
    seen ``shrink`` more times (an empty bin takes that mean)."""
    cond, fractions = cond.double(), fractions.double()
    incl = cond[:, :2].norm(dim=1) / cond[:, 2].clamp_min(1e-9)
    incl_max = float(torch.quantile(incl, 0.99)) if len(incl) else 0.0
    incl_max = incl_max if incl_max > 0 else 1.0
    sizes = torch.tensor(ALIGNED_BINS)
    total = torch.zeros(int(sizes.prod()), dtype=torch.float64)
    count = torch.zeros_like(total)
    for i in range(0, len(cond), chunk):
        unit = _aligned_unit(aligned_coordinates(cond[i : i + chunk], pitch, z_sm), incl_max)
        k = torch.minimum((unit * (sizes - 1)).round().clamp_min(0).long(), sizes - 1)
        flat = ((k[..., 0] * sizes[1] + k[..., 1]) * sizes[2] + k[..., 2]).reshape(-1)
        total.index_add_(0, flat, fractions[i : i + chunk].reshape(-1))
        count.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
    total, count = total.view(ALIGNED_BINS), count.view(ALIGNED_BINS)
    pooled = total.sum(0) / count.sum(0).clamp_min(1)  # all inclinations together
    return (total + shrink * pooled) / (count + shrink), incl_max


class LHCbConvGenerator(nn.Module):
    """Generator of [C18]: (z (N, L), y (N, 5)) → (N, 30, 30) image in network units, or, with
    ``energy_sharing``, fractions f ≥ 0 of E_tot with Σ f = 1 over the 900 cells.

    Dense([z, y]) → (c, 4, 4) → ConvT to (c/2, 8, 8), (c/4, 16, 16), (c/8, 32, 32), ReLU →
    3×3 conv to one map (linear: the target is Box-Cox + standardised) → centre crop 30×30;
    with ``energy_sharing`` f = softmax(map + b) over the 900 cells, b a fixed (30, 30) buffer
    (zero unless set by :meth:`set_prior`).
    """

    def __init__(self, config: LHCbConvConfig, n_conditions: int = LHCB_CONDITIONS) -> None:
        super().__init__()
        c = config.channels
        self.noise_dim, self.channels = config.latent_dim, c
        self.energy_sharing = bool(config.energy_sharing)
        self.dense = nn.Linear(config.latent_dim + n_conditions, c * 16)
        ups: list[nn.Module] = []
        for k in range(3):
            ups += [nn.ConvTranspose2d(c >> k, c >> (k + 1), 4, stride=2, padding=1), nn.ReLU()]
        self.up = nn.Sequential(*ups, nn.Conv2d(c >> 3, 1, 3, padding=1))
        if self.energy_sharing:  # only here, so that older checkpoints still load
            self.register_buffer("log_prior", torch.zeros(LHCB_SIDE, LHCB_SIDE))
        self.aligned = bool(config.aligned_prior)
        if self.aligned:  # log table; (pitch, z_sm, incl_max); label μ and σ of the 5 conditions
            self.register_buffer("aligned_log", torch.zeros(1, 1, *ALIGNED_BINS))
            self.register_buffer("aligned_geom", torch.ones(3))
            self.register_buffer("label_mean", torch.zeros(n_conditions))
            self.register_buffer("label_std", torch.ones(n_conditions))

    def set_prior(self, mean_fractions: Tensor, floor: float = 1e-6) -> None:
        """b = log(max(f̄, ``floor``)) from the mean training fractions f̄ (30, 30): the
        untrained generator then gives the mean shower instead of E_tot/900 in every cell (a
        flat image that the critic rejects for the first few hundred iterations)."""
        self.log_prior.copy_(torch.log(mean_fractions.clamp_min(floor)).reshape_as(self.log_prior))

    def set_aligned_prior(
        self,
        table: Tensor,
        incl_max: float,
        pitch: float,
        z_sm: float,
        label_mean: Tensor,
        label_std: Tensor,
        floor: float = 1e-6,
    ) -> None:
        """``aligned_prior``: the log of :func:`aligned_table` (floored at ``floor``), its
        geometry, and the label standardisation (the generator sees standardised conditions
        and needs the raw ones to place the prior)."""
        self.aligned_log.copy_(torch.log(table.clamp_min(floor)).reshape_as(self.aligned_log))
        self.aligned_geom.copy_(torch.tensor([pitch, z_sm, incl_max]))
        self.label_mean.copy_(label_mean.reshape(-1))
        self.label_std.copy_(label_std.reshape(-1))

    def _aligned_log_prior(self, y: Tensor) -> Tensor:
        """(N, 30, 30) log prior of each event, interpolated in the aligned table."""
        pitch, z_sm, incl_max = self.aligned_geom
        coords = aligned_coordinates(y * self.label_std + self.label_mean, pitch, z_sm)
        grid = 2 * _aligned_unit(coords, incl_max) - 1  # grid_sample wants (W, H, D) order
        grid = grid.flip(-1).reshape(1, 1, len(y), -1, 3)
        table = self.aligned_log.to(y.dtype)
        out = F.grid_sample(table, grid, align_corners=True, padding_mode="border")
        return out.view(len(y), LHCB_SIDE, LHCB_SIDE)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        y = _as_2d(y)
        h = F.relu(self.dense(torch.cat([z, y], 1))).view(-1, self.channels, 4, 4)
        out = self.up(h)[:, 0, 1:31, 1:31]
        if self.energy_sharing:
            prior = self._aligned_log_prior(y) if self.aligned else self.log_prior
            return torch.softmax((out + prior).reshape(len(out), -1), 1).view_as(out)
        return out


class _ConvEncoder(nn.Module):
    """The mirror of the generator: (N, 30, 30) → padded (1, 32, 32) → 3 strided convs →
    (N, c·16) features, LeakyReLU, no normalisation (gradient penalty, [GP17])."""

    def __init__(self, channels: int, slope: float) -> None:
        super().__init__()
        c = channels
        layers: list[nn.Module] = [nn.Conv2d(1, c >> 3, 3, padding=1), nn.LeakyReLU(slope)]
        for k in (3, 2, 1):
            layers += [nn.Conv2d(c >> k, c >> (k - 1), 4, stride=2, padding=1), nn.LeakyReLU(slope)]
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.n_features = c * 16

    def forward(self, x: Tensor) -> Tensor:
        return self.net(F.pad(x.reshape(-1, 1, LHCB_SIDE, LHCB_SIDE), (1, 1, 1, 1)))


class LHCbRegressor(nn.Module):
    """Regressor of [C18] with the critic's architecture: (N, 30, 30) → (N, 5) conditions
    (standardised). Pre-trained on real images, then embedded frozen in the critic."""

    def __init__(self, config: LHCbConvConfig, n_conditions: int = LHCB_CONDITIONS) -> None:
        super().__init__()
        self.encoder = _ConvEncoder(config.channels, config.leaky_slope)
        self.head = nn.Linear(self.encoder.n_features, n_conditions)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


class LHCbConvCritic(nn.Module):
    """Critic of [C18]: (x (N, 30, 30), y (N, 5)) → (N,) scores.

    f(x, y) = head([φ(x), y, R(x), y − R(x)]) with φ the mirror-image encoder and R the
    embedded, frozen pre-trained regressor: the critic's gradient with respect to x then carries
    how far the image's apparent conditions R(x) are from the requested ones y. R never
    trains here: ``requires_grad_`` and ``train`` keep it frozen and in eval mode (its weights
    still get saved with the critic, and gradients still flow through it to x).
    """

    def __init__(
        self,
        config: LHCbConvConfig,
        regressor: LHCbRegressor | None = None,
        n_conditions: int = LHCB_CONDITIONS,
    ) -> None:
        super().__init__()
        self.encoder = _ConvEncoder(config.channels, config.leaky_slope)
        self.regressor = regressor if regressor is not None else LHCbRegressor(config, n_conditions)
        self.head = nn.Sequential(
            nn.Linear(self.encoder.n_features + 3 * n_conditions, 64),
            nn.LeakyReLU(config.leaky_slope),
            nn.Linear(64, 1),
        )
        self.regressor.requires_grad_(False).eval()

    def requires_grad_(self, requires_grad: bool = True) -> LHCbConvCritic:
        super().requires_grad_(requires_grad)
        self.regressor.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> LHCbConvCritic:
        super().train(mode)
        self.regressor.eval()
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        y = _as_2d(y)
        r = self.regressor(x)
        return self.head(torch.cat([self.encoder(x), y, r, y - r], 1)).squeeze(1)


# ------------------------------------------------------------------------------ CaloChallenge
class CaloChallengeGenerator(nn.Module):
    """(z (N, L), y (N, C) standardised log E_inc [, log E_tot] [, ±1 per layer]) → voxel
    fractions (N, V) ≥ 0 of E_inc (of E_tot with ``condition_response``, rows then sum to 1).

    Energy sharing in the spirit of [K]: with ``per_layer`` the trunk predicts each layer's
    fraction of E_inc, r_l = softplus(a_l), and a softmax within the layer shares it among its
    voxels; otherwise one total fraction r = softplus(a) is shared by a softmax over all voxels.
    With ``total_response`` the layer fractions are r_l = softplus(a) · softmax(b)_l (one total
    response, L shares). ``layer_sizes`` are the voxel counts of the non-empty layers in flat
    order (any binning).
    """

    def __init__(self, layer_sizes: Sequence[int], config: CaloChallengeModelConfig) -> None:
        super().__init__()
        c = config
        self.layer_sizes = [int(n) for n in layer_sizes]
        self.per_layer, self.total_response = c.per_layer, c.total_response
        self.shares_only, self.masked = c.condition_response, c.condition_layers
        self.flags_at, self.given_shares = c.n_conditions, c.layer_flow
        n_cells = sum(self.layer_sizes)
        n_resp = len(self.layer_sizes) + int(c.total_response) if c.per_layer else 1
        n_resp -= int(c.condition_response and c.total_response)
        self.voxel_noise = VoxelNoise(n_cells, c.voxel_noise, c.voxel_noise_slope)
        self.layer_noise = VoxelNoise(n_resp, c.layer_noise)
        self.noise_dim = c.latent_dim + self.voxel_noise.n_cells + self.layer_noise.n_cells
        n_in = c.latent_dim + c.label_width(len(self.layer_sizes))
        self.trunk = mlp(n_in, c.hidden, c.depth - 1, c.hidden, c.leaky_slope)
        self.act = nn.LeakyReLU(c.leaky_slope)
        self.logits = nn.Linear(c.hidden, n_cells)
        self.response = nn.Linear(c.hidden, n_resp)
        self.layer_prior = EnergyPrior(n_resp if c.layer_prior else 0)
        self.voxel_prior = EnergyPrior(n_cells if c.voxel_prior else 0)

    def fit_priors(self, y0: Tensor, cells: Tensor) -> None:
        """Set ``layer_prior``/``voxel_prior`` from the training showers: standardised
        log E_inc y₀ (N,) and energies ``cells`` (N, V) in flat layer order."""
        cells = cells.double()
        layers = layer_sums(cells, self.layer_sizes)
        self.layer_prior.fit(y0, layers / layers.sum(1, keepdim=True).clamp_min(1e-30))
        if self.per_layer:  # each voxel's share of its layer (events with the layer empty: NaN)
            own = torch.repeat_interleave(layers, torch.tensor(self.layer_sizes), dim=1)
        else:
            own = cells.sum(1, keepdim=True)
        self.voxel_prior.fit(y0, torch.where(own > 0, cells / own, torch.nan))

    def _response(self, h: Tensor, y: Tensor, eps_layer: Tensor | None) -> Tensor:
        """(N, L) layer fractions (of E_inc, or shares of E_tot with ``condition_response``)."""
        a = self.layer_noise(self.layer_prior.add(self.response(h), y[:, 0]), eps_layer)
        if self.shares_only:  # fractions of the conditional E_tot: rows sum to 1
            if self.masked:  # empty layers (flag −1 after the energies) get nothing
                empty = y[:, self.flags_at : self.flags_at + len(self.layer_sizes)] < 0
                a = a.masked_fill(empty, -1e9)
            return torch.softmax(a, 1)
        if self.total_response:
            return F.softplus(a[:, :1]) * torch.softmax(a[:, 1:], 1)
        return F.softplus(a)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        z, eps_layer = self.layer_noise.split(z)
        z, eps = self.voxel_noise.split(z)
        y = _as_2d(y)
        h = self.act(self.trunk(torch.cat([z, y], 1)))
        logits = self.voxel_noise(self.voxel_prior.add(self.logits(h), y[:, 0]), eps, y[:, 0])
        resp = (
            y[:, -len(self.layer_sizes) :] if self.given_shares else self._response(h, y, eps_layer)
        )
        if not self.per_layer:
            return torch.softmax(logits, 1) * resp
        parts = torch.split(logits, self.layer_sizes, dim=1)
        return torch.cat([torch.softmax(p, 1) * resp[:, k : k + 1] for k, p in enumerate(parts)], 1)


class CaloChallengeCritic(nn.Module):
    """(x (N, V) = log(1 + v/s), y (N, 1)) → (N,) scores, v the voxel's fraction of E_inc (or
    its energy in MeV with ``critic_mev_scale``); the critic also sees one input per layer so
    that layer energies need not be learnt from the voxels: the per-layer sums of x, or, with
    ``critic_layer_fractions``, g(v_l) per layer and g(v_tot), g(v) = log(1 + v/s), the layer
    sums v_l recovered exactly as Σ s·(eˣ − 1); with ``critic_occupancy`` also each layer's
    soft occupancy (after the layer inputs, before the label)."""

    def __init__(self, layer_sizes: Sequence[int], config: CaloChallengeModelConfig) -> None:
        super().__init__()
        c = config
        self.layer_sizes = [int(n) for n in layer_sizes]
        self.fractions, self.scale = bool(c.critic_layer_fractions), float(c.critic_scale)
        self.occupancy = bool(c.critic_occupancy)
        n_layers = len(self.layer_sizes)
        n_in = sum(self.layer_sizes) + n_layers + c.label_width(n_layers) + int(self.fractions)
        n_in += n_layers if self.occupancy else 0
        self.net = mlp(n_in, c.hidden, c.depth, 1, c.leaky_slope)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if not self.fractions:
            sums = layer_sums(x, self.layer_sizes)
        else:
            layers = layer_sums(self.scale * torch.expm1(x.clamp_min(0)), self.layer_sizes)
            sums = torch.log1p(torch.cat([layers, layers.sum(1, keepdim=True)], 1) / self.scale)
        if self.occupancy:
            filled = layer_sums(torch.tanh(x / math.log(2.0)), self.layer_sizes)
            sums = torch.cat([sums, filled / x.new_tensor(self.layer_sizes)], 1)
        return self.net(torch.cat([x, sums, _as_2d(y)], 1)).squeeze(1)


# ------------------------------------------------------------------------------------ factory
_CONFIGS: dict[str, type[Config]] = {
    "dense": DenseCaloConfig,
    "lhcb-conv": LHCbConvConfig,
    "calochallenge": CaloChallengeModelConfig,
}


def model_config_class(kind: str) -> type[Config]:
    """The config class of a model kind (``dense``, ``lhcb-conv``, ``calochallenge``)."""
    require(kind in _CONFIGS, f"model '{kind}' unknown; use one of {', '.join(MODEL_KINDS)}")
    return _CONFIGS[kind]


def build_calo_models(
    kind: str, config: Config, layer_sizes: Sequence[int] = ()
) -> dict[str, nn.Module]:
    """``generator`` and ``critic`` (and, for ``lhcb-conv``, the ``regressor`` that is the
    critic's embedded submodule). ``layer_sizes``: cells per layer in flat order (dense: the
    sum, and the split for ``critic_layer_sums``; lhcb-conv: ignored)."""
    model_config_class(kind)
    if kind == "dense":
        n = int(sum(layer_sizes))
        n_cond = 1 + (len(layer_sizes) if config.condition_layers else 0)
        critic = DenseCaloCritic(n, config, n_cond, layer_sizes=layer_sizes)
        return {"generator": DenseCaloGenerator(n, config, n_cond, layer_sizes), "critic": critic}
    if kind == "lhcb-conv":
        regressor = LHCbRegressor(config)
        return {
            "generator": LHCbConvGenerator(config),
            "critic": LHCbConvCritic(config, regressor),
            "regressor": regressor,
        }
    return {
        "generator": CaloChallengeGenerator(layer_sizes, config),
        "critic": CaloChallengeCritic(layer_sizes, config),
    }
