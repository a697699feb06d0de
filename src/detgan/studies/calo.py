"""Calorimeter WGANs end to end: presets, training, generation to the training file's format, study.

Three models of :mod:`detgan.models.calo` on the trainer of :mod:`detgan.train`:

- ``dense`` [K] (``paper_methods.md`` §4): cells (thresholded) divided by the cluster's total
  energy E_tot; condition standardised log10 E_tot; softmax energy sharing; optional sparsity
  term; thresholds applied after generation. Events with E_tot above ``max_total_energy`` are
  dropped from training (the paper: 300 GeV).
- ``lhcb-conv`` [C18, arXiv:1812.01319] (§5): 30×30 images, Box-Cox + standardised; 5
  standardised conditions (p_x, p_y, p_z, x, y); a regressor pre-trained on the real images is
  embedded, frozen, in the critic. With ``energy_sharing`` (not in [C18]): E_tot = |p| · r, r
  drawn from training events of similar |p|, shared by a softmax over the 900 cells; a cell
  threshold from the training data after generation.
- ``calochallenge`` (arXiv:2410.21611): any CaloChallenge binning; condition standardised
  log10 E_inc; voxel fractions of E_inc by (per-layer) energy sharing; E_min after generation.

A run directory holds ``checkpoint.pt``, ``history.jsonl`` and ``config.json`` (with
``model_kind``, which ``detgan generate`` dispatches on). Functions for scripts::

    train_calo(setup, data_path, run_dir, *, device="cpu", resume=False, ...)
    load_calo_model(run_dir, device="cpu") -> CaloModel
    generate_calo(run_dir, n, energy_spec, seed, out, *, device="cpu", overwrite=False)
    run_calo_study(run_dir, reference, out_dir, *, n_events=10000, seed=0, ...)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detgan import __version__
from detgan.config import Config, pick_preset, require
from detgan.io.showers import Showers, detect_format, load_showers, save_showers
from detgan.models.calo import (
    MODEL_KINDS,
    LayerEnergyFlow,
    aligned_table,
    build_calo_models,
    layer_sums,
    model_config_class,
)
from detgan.observables_lhcb import Z_SM_MM, lhcb_pitch_mm
from detgan.sim.geometry import layout_from_dict
from detgan.train import (
    AdversarialProblem,
    TrainConfig,
    Trainer,
    load_checkpoint,
    load_run,
    prepare_run_dir,
)
from detgan.transforms import BoxCox, Chain, Standardise, Transform, transform_from_state
from detgan.utils import DetganError, check_output_path, resolve_device

__all__ = [
    "CaloDataConfig",
    "CaloSetup",
    "CALO_PRESETS",
    "NOISY_FILE_SETTINGS",
    "calo_preset",
    "is_calo_run",
    "train_calo",
    "CaloModel",
    "load_calo_model",
    "conditions_from_spec",
    "generate_calo",
    "run_calo_study",
    "straight_through_threshold",
    "straight_through_hits",
    "hit_quanta",
    "quantum_at",
    "response_table",
    "energy_balance_weights",
    "draw_response",
    "draw_conditions",
    "lhcb_stage1",
    "lhcb_totals",
    "PARAMETER_GRID",
    "run_parameter_study",
]

CONFIG_NAME = "config.json"
#: lhcb-conv ``energy_sharing``: the cell threshold is this quantile of the non-zero training
#: cells (the readout cut of the reference files: smallest cell ≈ 1.76 MeV, 0.1 % ≈ 2.1 MeV)
LHCB_THRESHOLD_QUANTILE = 1e-3
ATLAS_THRESHOLDS = {"middle": 200.0, "strip": 60.0, "presampler": 120.0, "back": 200.0}


@dataclasses.dataclass(frozen=True)
class CaloDataConfig(Config):
    """Data settings. ``epochs`` > 0 sets iterations = ⌈epochs·N/(batch·n_critic)⌉;
    ``max_events`` > 0 caps the sample; ``max_total_energy`` > 0 (MeV, dense) drops events with
    a larger cluster energy; ``sparsity_weight`` (dense) weights Σ√f of the generated fractions
    (the L1 norm of a softmax is identically 1, so [K]'s L1 term is applied as this L½ term);
    ``regressor_steps``/``regressor_lr`` (lhcb-conv) pre-train the embedded regressor;
    ``boxcox_shift`` (MeV, lhcb-conv) is added before the Box-Cox transform;
    ``threshold_fakes`` (dense, calochallenge, lhcb-conv with ``energy_sharing``): in training,
    generated cells below the cell thresholds are zeroed before the critic sees them, as the
    real cells are, with a straight-through gradient (the cells below still learn to rise);
    ``keep_total`` (with thresholds applied to generated showers): the cells that pass are
    scaled up so that the shower keeps the total it had before the threshold — the energy that
    the conditions ask for (E_tot of the real files is the sum of the cells above threshold),
    in training (with ``threshold_fakes``) and in generation; ``keep_layers`` (dense,
    calochallenge, implies ``keep_total``): each layer keeps the total it had before the
    threshold instead (with ``layer_flow`` the layer energies are then the stage-1 flow's
    wherever a voxel passes). ``balance_energies`` (dense,
    calochallenge): real events are drawn with weights that make every range of the
    conditioning log energy equally frequent (:func:`energy_balance_weights`), so that rare
    energies (the few TeV showers of CaloChallenge dataset 1) train as often as common ones;
    the fakes carry the same labels, so the conditional model is unchanged. ``hit_quanta``
    (dense, calochallenge; not in [K]): showers made of equal-energy deposits (the spots of
    the reference simulation, calorimeter.md §2) have cells that are whole numbers of one
    quantum q(E), so a cell is empty with the probability of no deposit; the generated cells
    are turned into k ~ Poisson(E_cell/q) deposits of q (:func:`hit_quanta`, measured on the
    training showers), before the threshold, in training (straight-through gradient) and in
    generation. For noiseless voxel files; the smallest cell of a noisy file is no quantum.
    ``cell_noise`` (dense, calochallenge; not in [K]): Gaussian electronic noise of the
    training file's per-layer σ_n (its ``geometry_json`` attribute, written by ``detgan
    simulate calo``) is added to the generated cells before the threshold, in training and in
    generation, as the reference simulation does (calorimeter.md §2.5). ``keep_flags`` (with
    ``keep_layers`` and the model's ``condition_layers``; not in [K]): a layer that the
    drawn flags say is on keeps its energy even when no cell passes the threshold (after
    the deposits and the noise): its hottest cell carries it if that passes the cell's
    threshold, so that the generated showers have the empty layers of the training data."""

    epochs: float = 0.0
    max_events: int = 0
    max_total_energy: float = 0.0
    sparsity_weight: float = 0.0
    regressor_steps: int = 0
    regressor_lr: float = 1e-3
    boxcox_shift: float = 1.0
    threshold_fakes: bool = False
    keep_total: bool = False
    keep_layers: bool = False
    balance_energies: bool = False
    hit_quanta: bool = False
    cell_noise: bool = False
    keep_flags: bool = False

    def validate(self) -> None:
        require(self.epochs >= 0, "epochs must be >= 0 (0: use iterations)")
        require(self.max_events >= 0, "max_events must be >= 0 (0: all events)")
        require(self.max_total_energy >= 0, "max_total_energy must be >= 0 (0: no cut)")
        require(self.sparsity_weight >= 0, "sparsity_weight must be >= 0")
        require(self.regressor_steps >= 0, "regressor_steps must be >= 0")
        require(self.regressor_lr > 0, "regressor_lr must be positive")
        require(self.boxcox_shift > 0, "boxcox_shift must be positive (MeV)")
        require(self.keep_layers or not self.keep_flags, "keep_flags needs keep_layers=true")


@dataclasses.dataclass(frozen=True)
class CaloSetup:
    """Model kind plus the three configs of a calorimeter run; stored in every checkpoint."""

    model_kind: str
    model: Config
    train: TrainConfig
    data: CaloDataConfig

    def to_json(self) -> str:
        parts = {k: json.loads(getattr(self, k).to_json()) for k in ("model", "train", "data")}
        return json.dumps({"model_kind": self.model_kind, **parts}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CaloSetup:
        d = json.loads(text)
        kind = d["model_kind"]
        return cls(
            kind,
            model_config_class(kind).from_dict(d["model"]),
            TrainConfig.from_dict(d["train"]),
            CaloDataConfig.from_dict(d["data"]),
        )

    def with_overrides(self, values: dict[str, Any]) -> CaloSetup:
        parts: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
        for name, value in values.items():
            owner = [k for k in parts if name in getattr(self, k).field_names()]
            if not owner:
                valid = sorted(n for k in parts for n in getattr(self, k).field_names())
                raise DetganError(f"unknown setting '{name}'; valid settings: {', '.join(valid)}")
            parts[owner[0]][name] = value
        new = {k: getattr(self, k).replace(**parts[k]) for k in parts}
        return CaloSetup(self.model_kind, **new)


def _train(iterations: int, batch: int, lr: float, epochs: float = 0.0, **kw: Any) -> TrainConfig:
    return TrainConfig(
        iterations=iterations,
        batch_size=batch,
        lr_generator=lr,
        lr_critic=lr,
        decay_generator=0.0,
        decay_critic=0.0,
        checkpoint_every=kw.pop("checkpoint_every", 500),
        **kw,
    )


def _presets() -> dict[str, dict[str, CaloSetup]]:
    dense, conv = model_config_class("dense"), model_config_class("lhcb-conv")
    cc = model_config_class("calochallenge")
    k_data = CaloDataConfig(max_total_energy=300e3)  # [K]: events above 300 GeV dropped
    c_data = CaloDataConfig(regressor_steps=300)
    # quick/full (not in [K]): critic on log-scaled fractions and layer sums, thresholds in
    # training (straight-through), EMA generator, one learnt noise per cell (session 6):
    # results.md, "Calorimeter WGANs"
    k_ours = dense(critic_log_scale=1e-3, critic_layer_sums=True, voxel_noise=0.5)
    k_ours_data = k_data.replace(threshold_fakes=True)
    # lhcb-conv quick/full (not in [C18]): E_tot = |p|·r drawn, shared by a softmax over the
    # cells that starts from the mean shower aligned with each event's track; thresholded
    # fakes; EMA generator: docs/calo_models.md
    lhcb_ours = {"energy_sharing": True, "aligned_prior": True}
    # calochallenge quick/full: two stages (empty layers drawn from a training event, layer
    # energies from a flow trained first, the WGAN shares within the layers; session 8),
    # critic in MeV units that also sees the occupancies; cells as whole numbers of the
    # training showers' deposit quantum, which replaces the learnt voxel noise of sessions 6
    # and 8 (session 9: sparsities, widths, HL AUC; results.md)
    cc_data = CaloDataConfig(
        threshold_fakes=True, keep_total=True, keep_layers=True, hit_quanta=True
    )
    cc_ours = cc(
        condition_response=True,
        condition_layers=True,
        critic_mev_scale=1.0,
        critic_layer_fractions=True,
        layer_flow=True,
        critic_occupancy=True,
    )
    return {
        "dense": {  # [K]: 100 latent, 3 × 128, λ = 10, n_critic = 5, 1000 epochs
            "paper": CaloSetup("dense", dense(), _train(1, 128, 1e-4), k_data.replace(epochs=1000)),
            "full": CaloSetup(
                "dense", k_ours, _train(1, 256, 2e-4, ema_decay=0.999),
                k_ours_data.replace(epochs=200),
            ),
            "quick": CaloSetup(
                "dense", k_ours, _train(12000, 128, 2e-4, ema_decay=0.999), k_ours_data
            ),
        },
        "lhcb-conv": {  # [C18]: 512 latent, 256·4·4 start, 3000 epochs
            "paper": CaloSetup(
                "lhcb-conv", conv(), _train(1, 64, 1e-4),
                c_data.replace(epochs=3000, regressor_steps=3000),
            ),
            "full": CaloSetup(  # 6 000 it. at ≈ 0.94 s on one core: ≈ 95 min
                "lhcb-conv", conv(channels=64, latent_dim=128, **lhcb_ours),
                _train(6000, 64, 2e-4, ema_decay=0.999),
                c_data.replace(regressor_steps=2000, threshold_fakes=True),
            ),
            "quick": CaloSetup(
                "lhcb-conv", conv(channels=32, latent_dim=64, **lhcb_ours),
                _train(1200, 64, 2e-4, ema_decay=0.999), c_data.replace(threshold_fakes=True),
            ),
        },
        "calochallenge": {  # no published reference: 'paper' is the largest of our designs
            "paper": CaloSetup(
                "calochallenge", cc(latent_dim=128, hidden=1024), _train(1, 256, 1e-4),
                CaloDataConfig(epochs=500),
            ),
            "full": CaloSetup(
                "calochallenge", cc_ours.replace(hidden=512), _train(1, 256, 2e-4, ema_decay=0.999),
                cc_data.replace(epochs=100),
            ),
            "quick": CaloSetup(
                "calochallenge", cc_ours, _train(5000, 128, 2e-4, ema_decay=0.999), cc_data
            ),
        },
    }  # fmt: skip


#: Named presets per model kind: ``paper``, ``full`` and ``quick`` (≤ 20 min on 2 cores).
CALO_PRESETS: dict[str, dict[str, CaloSetup]] = _presets()


#: ``calochallenge`` ``quick``/``full`` on a file whose provenance records electronic noise
#: (ATLAS clusters): the noise is generated instead of whole deposits, the drawn layer flags
#: hold after the thresholds, the critic's MeV scale sits at the ATLAS thresholds of 60–200 MeV
#: (results.md, session 10)
NOISY_FILE_SETTINGS: dict[str, Any] = {
    "hit_quanta": False,
    "cell_noise": True,
    "keep_flags": True,
    "critic_mev_scale": 100.0,
}


def calo_preset(
    model_kind: str, name: str, data_path: str | os.PathLike | None = None
) -> CaloSetup:
    """The preset ``name`` (``paper``, ``full``, ``quick``) of a model kind; given the training
    file ``data_path``, a preset with ``hit_quanta`` (calochallenge ``quick``/``full``) takes
    :data:`NOISY_FILE_SETTINGS` when the file records electronic noise."""
    model_config_class(model_kind)
    setup = pick_preset(CALO_PRESETS[model_kind], name, f"{model_kind} preset")
    if (
        data_path is not None
        and setup.data.hit_quanta
        and _max_noise(load_showers(data_path, stop=1)) > 0
    ):
        setup = setup.with_overrides(NOISY_FILE_SETTINGS)
    return setup


def is_calo_run(run_dir: str | os.PathLike) -> bool:
    """True when ``RUN/config.json`` names a calorimeter model kind (no torch needed)."""
    try:
        return (
            json.loads((Path(run_dir) / CONFIG_NAME).read_text()).get("model_kind") in MODEL_KINDS
        )
    except (OSError, ValueError, AttributeError):
        return False


# --------------------------------------------------------------------------- data preparation
def _cell_thresholds(layout: Any) -> np.ndarray:
    """(V,) per-cell thresholds: ATLAS noise thresholds (§1.4) by layer, CaloChallenge E_min."""
    if getattr(layout, "kind", "") == "calochallenge":
        return np.full(layout.n_cells, float(layout.e_min))
    out = np.zeros(layout.n_cells)
    if str(getattr(layout, "name", "")).startswith("atlas"):
        for k, name in enumerate(layout.layer_names):
            out[layout.layer_slice(k)] = ATLAS_THRESHOLDS.get(name, 0.0)
    return out


def _threshold(
    cells: np.ndarray,
    thresholds: Any,
    keep_total: bool = False,
    layer_sizes: Sequence[int] | None = None,
    before: np.ndarray | None = None,
    keep_flags: bool = False,
) -> np.ndarray:
    """Cells (N, V) below ``thresholds`` (V,) or a scalar zeroed; ``keep_total``: the rest
    scaled so that each row keeps its sum (rows with nothing left stay 0, or with
    ``keep_flags`` go into their hottest cell if the sum passes its threshold), or with
    ``layer_sizes`` (cells per layer in flat order) so that each layer keeps its sum; the
    sums kept are those of ``before`` (N, V) when given (default ``cells``)."""
    kept = np.where(cells < thresholds, 0.0, cells)
    if not keep_total:
        return kept
    sizes = list(layer_sizes or [cells.shape[1]])
    starts = np.cumsum([0, *sizes[:-1]])
    full = cells if before is None else before
    before, after = (np.add.reduceat(a, starts, axis=1) for a in (full, kept))
    scale = np.divide(before, after, out=np.ones_like(after), where=after > 0)
    kept = kept * np.repeat(scale, sizes, axis=1)
    if keep_flags:
        for k, (start, size) in enumerate(zip(starts, sizes)):
            rows = np.flatnonzero((after[:, k] == 0) & (before[:, k] > 0))
            hottest = start + cells[rows, start : start + size].argmax(1)
            kept[rows, hottest] = before[rows, k]
        kept = np.where(kept < thresholds, 0.0, kept)  # a filled cell must pass, too
    return kept


def _layer_sizes(layout: Any) -> list[int]:
    return [
        layout.layer_slice(k).stop - layout.layer_slice(k).start for k in layout.relevant_layers
    ]


def _lhcb_conditions(showers: Showers) -> np.ndarray:
    """(N, 5) = (p_x, p_y, p_z) MeV and face point (x, y) mm."""
    c = showers.conditions
    if "momentum" not in c or "point" not in c:
        raise DetganError(
            "lhcb-conv needs 'momentum' and 'point' conditions; use an LHCb .npz file"
        )
    return np.concatenate([c["momentum"][:, :3], c["point"][:, :2]], 1).astype(np.float64)


def _condition(kind: str, showers: Showers, thresholds: np.ndarray) -> np.ndarray:
    """The raw condition per event: E_tot (dense), 5 LHCb conditions, E_inc (calochallenge)."""
    if kind == "dense":
        return _threshold(np.asarray(showers.cells, np.float64), thresholds).sum(1)
    if kind == "lhcb-conv":
        return _lhcb_conditions(showers)
    return np.asarray(showers.energy, np.float64)


def _fit_boxcox(cells: np.ndarray, shift: float, limit: int = 20_000) -> BoxCox:
    """Box-Cox λ from (a subsample of) the non-zero cells, clipped to λ ≥ 0: a negative λ
    bounds the transformed range, so generated values beyond 1/|λ| would have no inverse."""
    nz = cells[cells > 0]
    nz = nz[:: max(1, nz.size // limit)] if nz.size else np.ones(1)
    fitted = BoxCox(shift=shift).fit(torch.from_numpy(np.ascontiguousarray(nz)))
    return BoxCox(lam=max(0.0, float(fitted.lam)), shift=shift)


def _fit_transforms(kind: str, cells: np.ndarray, cond: np.ndarray, setup: CaloSetup):
    if kind == "lhcb-conv":
        cell_t = Chain(_fit_boxcox(cells, setup.data.boxcox_shift), Standardise(scalar=True))
        cell_t.parts[1].fit(cell_t.parts[0].forward(torch.from_numpy(cells.reshape(-1))))
        return {"cells": cell_t, "label": Standardise().fit(torch.from_numpy(cond))}
    energies = _energies(cond, _n_energies(setup))
    label = Standardise(scalar=energies.ndim == 1).fit(torch.from_numpy(np.log10(energies)))
    return {"label": label}


# Raw conditions of dense/calochallenge runs: the energy E_tot (dense) or E_inc, (N,); with
# ``condition_response`` the columns (E_inc, E_tot); with ``condition_layers`` one 0/1
# occupancy flag per layer follows the energy column(s), with ``layer_flow`` then one share of
# E_tot per layer. lhcb-conv: the 5 LHCb conditions.
def _n_energies(setup: CaloSetup) -> int:
    """Energy columns of the raw conditions: 2 with ``condition_response``, else 1."""
    return 2 if _conditions_response(setup) else 1


def _energies(cond: np.ndarray, n_energies: int) -> np.ndarray:
    """The energy column(s) of raw conditions: (N,) for one, (N, 2) for (E_inc, E_tot)."""
    if cond.ndim == 1:
        return cond
    return cond[:, 0] if n_energies == 1 else cond[:, :n_energies]


def _shared_energy(cond: np.ndarray, n_energies: int) -> np.ndarray:
    """(N,) the energy the generator's fractions refer to: the last energy column (E_tot for
    dense and for calochallenge with ``condition_response``, else E_inc)."""
    return cond if cond.ndim == 1 else cond[:, n_energies - 1]


def _label(
    kind: str,
    transforms: dict[str, Transform],
    cond: np.ndarray,
    n_energies: int = 1,
    shares: bool = False,
) -> Tensor:
    """Network label (N, C) float32 from raw conditions: LHCb conditions standardised,
    otherwise standardised log10 energies (non-positive ones taken as 1 MeV) and ±1 flags;
    with ``shares`` (``layer_flow``) the second half of the columns after the energies are
    the layer shares of E_tot, passed as they are."""
    cond = np.asarray(cond, np.float64)
    if kind == "lhcb-conv":
        return transforms["label"].forward(torch.from_numpy(cond)).float().reshape(len(cond), -1)
    e = _energies(cond, n_energies)
    c = torch.log10(torch.from_numpy(np.where(e > 0, e, 1.0)))
    label = transforms["label"].forward(c).float().reshape(len(cond), -1)
    if cond.ndim == 2 and cond.shape[1] > n_energies:
        rest = torch.from_numpy(cond[:, n_energies:]).float()
        n_flags = rest.shape[1] // 2 if shares else rest.shape[1]
        label = torch.cat([label, 2 * rest[:, :n_flags] - 1, rest[:, n_flags:]], 1)
    return label


def _to_net(kind: str, setup: CaloSetup, transforms, cells: np.ndarray, cond: np.ndarray) -> Tensor:
    """Real events in network units: fractions (dense), images (lhcb), log fractions (cc)."""
    if kind == "lhcb-conv":
        return transforms["cells"].forward(torch.from_numpy(cells)).float().reshape(-1, 30, 30)
    m = setup.model
    if kind == "calochallenge" and m.critic_mev_scale > 0:
        return torch.log1p(torch.from_numpy(cells / m.critic_mev_scale).float())
    frac = torch.from_numpy(cells / _shared_energy(cond, _n_energies(setup))[:, None]).float()
    return frac if kind == "dense" else torch.log1p(frac / m.frac_scale)


def _conditions_response(setup: CaloSetup) -> bool:
    return setup.model_kind == "calochallenge" and bool(setup.model.condition_response)


def _lhcb_shares(setup: CaloSetup) -> bool:
    return setup.model_kind == "lhcb-conv" and bool(setup.model.energy_sharing)


def _momentum(cond: np.ndarray) -> np.ndarray:
    """(N,) |p| of raw LHCb conditions (N, 5), non-positive values taken as 1."""
    p = np.linalg.norm(np.asarray(cond, np.float64)[:, :3], axis=1)
    return np.where(p > 0, p, 1.0)


def lhcb_stage1(cells: np.ndarray, cond: np.ndarray) -> dict[str, Any]:
    """lhcb-conv ``energy_sharing`` stage 1, stored in the checkpoint's ``extra``: the table
    of (|p|, E_tot/|p|) of the training events (:func:`response_table`, keyed on |p|) and
    ``cell_threshold`` (MeV), the :data:`LHCB_THRESHOLD_QUANTILE` quantile of the non-zero
    training cells, applied after generation (and with ``threshold_fakes`` in training)."""
    nz = cells[cells > 0]
    thr = float(np.quantile(nz, LHCB_THRESHOLD_QUANTILE)) if nz.size else 0.0
    table = response_table(np.column_stack([_momentum(cond), cells.sum(1)]), 2)
    return {"response_table": table, "cell_threshold": thr}


def _set_lhcb_prior(generator, setup, transforms, showers: Showers, cells, cond) -> None:
    """The softmax start of ``energy_sharing``: the mean training shower, or with
    ``aligned_prior`` its table over (inclination, s, t) (:func:`aligned_table`)."""
    fractions = torch.from_numpy(cells / cells.sum(1, keepdims=True))
    if not setup.model.aligned_prior:
        generator.set_prior(fractions.mean(0).float())
        return
    pitch = lhcb_pitch_mm(showers.meta)
    table, incl_max = aligned_table(fractions, torch.from_numpy(cond), pitch, Z_SM_MM)
    label = transforms["label"]
    generator.set_aligned_prior(table.float(), incl_max, pitch, Z_SM_MM, label.mean, label.std)


def lhcb_totals(extra: dict[str, Any], cond: np.ndarray, seed: int) -> np.ndarray:
    """(N,) E_tot = |p| · r for raw LHCb conditions (N, 5), r = E_tot/|p| of a training event
    drawn among the 32 nearest in log |p| (:func:`draw_conditions`)."""
    return draw_conditions(extra["response_table"], _momentum(cond), seed)[:, 1]


def _draws_conditions(setup: CaloSetup) -> bool:
    """True when generation draws E_tot and/or the empty layers from the training events."""
    return _conditions_response(setup) or bool(getattr(setup.model, "condition_layers", False))


def _layer_energies(cells: np.ndarray, layout: Any) -> np.ndarray:
    """(N, L) energy of each (relevant) layer."""
    return np.stack([cells[:, layout.layer_slice(k)].sum(1) for k in layout.relevant_layers], 1)


def hit_quanta(cells: np.ndarray, energy: np.ndarray, groups: int = 20) -> dict[str, list]:
    """The deposit quantum q(E) of showers made of equal-energy deposits: in each group of
    events of similar ``energy`` (N,), the median over the events of the smallest non-zero cell
    of (N, V) ``cells``. Groups are the distinct energies when there are at most ``groups``
    (CaloChallenge dataset 1), else quantile bins of log E. For the reference simulation this is
    E_vis/N_s, the spot energy (calorimeter.md §2). Returns {"log_e", "log_q"} (natural logs,
    ascending E), read by :func:`quantum_at`."""
    smallest = np.where(cells > 0, cells, np.inf).min(1)
    ok = np.isfinite(smallest)
    require(ok.any(), "hit_quanta needs showers with energy above the threshold")
    log_e, log_q = np.log(energy[ok]), np.log(smallest[ok])
    levels = np.unique(log_e)
    if len(levels) > groups:
        levels = np.quantile(log_e, np.linspace(0, 1, groups + 1))[1:-1]
    which = np.searchsorted(levels, log_e) if len(levels) > 1 else np.zeros(len(log_e), int)
    ids = np.unique(which)
    return {
        "log_e": [float(np.median(log_e[which == g])) for g in ids],
        "log_q": [float(np.median(log_q[which == g])) for g in ids],
    }


def quantum_at(table: dict[str, list], energy: np.ndarray) -> np.ndarray:
    """q(E) MeV (N,) of a :func:`hit_quanta` table, interpolated in log–log (constant beyond
    the measured energies)."""
    return np.exp(np.interp(np.log(energy), table["log_e"], table["log_q"]))


def whole_hits(cells: np.ndarray, quantum: np.ndarray, seed: int) -> np.ndarray:
    """Cells (N, V) MeV → k·q with k ~ Poisson(cell/q), q (N,) the events' quanta."""
    q = np.asarray(quantum, np.float64)[:, None]
    return np.random.default_rng(seed).poisson(np.clip(cells, 0, None) / q) * q


def _uses_flow(setup: CaloSetup) -> bool:
    return setup.model_kind == "calochallenge" and bool(setup.model.layer_flow)


def response_table(cond: np.ndarray, n_energies: int = 2, limit: int = 20_000) -> dict[str, list]:
    """The stage-1 model that :func:`draw_conditions` samples: per training event (an even
    subsample of ≤ ``limit``), sorted by the conditioning energy E (E_inc, or E_tot for dense),
    log10 E, the response E_tot/E_inc (``n_energies`` 2) and the layer-occupancy pattern (0/1
    columns after the energies) as a string such as ``"10111"``."""
    cond = cond[:: max(1, len(cond) // limit)]
    order = np.argsort(cond[:, 0], kind="stable")
    cond = cond[order]
    table: dict[str, list] = {"log10_energy": np.log10(cond[:, 0]).tolist()}
    if n_energies == 2:
        table["response"] = (cond[:, 1] / cond[:, 0]).tolist()
    if cond.shape[1] > n_energies:
        table["layers"] = ["".join("01"[int(b)] for b in row) for row in cond[:, n_energies:]]
    return table


def _draw_rows(table: dict[str, list], energy: np.ndarray, seed: int, k: int = 32) -> np.ndarray:
    """Row indices of ``table`` drawn per event: a training event of the same energy (discrete
    energies, as in CaloChallenge dataset 1) or else one of the ``k`` nearest in log energy.
    (Tables written before session 3 name the energies ``log10_e_inc``.)"""
    log_e = np.asarray(table.get("log10_energy", table.get("log10_e_inc")))
    q = np.log10(np.asarray(energy, np.float64))
    lo, hi = np.searchsorted(log_e, q, "left"), np.searchsorted(log_e, q, "right")
    k = min(k, len(log_e))
    near = np.clip(lo - k // 2, 0, len(log_e) - k)
    lo, width = np.where(hi > lo, lo, near), np.where(hi > lo, hi - lo, k)
    u = np.random.default_rng(seed).random(len(q))
    return lo + np.minimum((u * width).astype(np.int64), width - 1)


def draw_response(table: dict[str, list], e_inc: np.ndarray, seed: int, k: int = 32) -> np.ndarray:
    """E_tot/E_inc (N,) drawn per event from the training events of the same E_inc or else
    from the ``k`` training events nearest in log E_inc (continuous energies)."""
    return np.asarray(table["response"])[_draw_rows(table, e_inc, seed, k)]


def draw_conditions(table: dict[str, list], energy: np.ndarray, seed: int) -> np.ndarray:
    """Stage 1 of ``condition_response`` / ``condition_layers``: raw conditions (E[, E_tot]
    [, occupancy flags]) per event for energies E (N,), the response and the pattern of empty
    layers taken from one drawn training event."""
    energy = np.asarray(energy, np.float64)
    rows = _draw_rows(table, energy, seed)
    cols = [energy[:, None]]
    if "response" in table:
        cols.append((energy * np.asarray(table["response"])[rows])[:, None])
    if "layers" in table:
        patterns = np.asarray(table["layers"])[rows]
        n_layers = len(table["layers"][0])
        flags = np.frombuffer("".join(patterns).encode(), np.uint8).reshape(len(rows), n_layers)
        cols.append((flags == ord("1")).astype(np.float64))
    return np.concatenate(cols, 1)


def _fake_to_net(
    kind: str, setup: CaloSetup, transforms: dict[str, Transform] | None = None
) -> Any:
    """(generator output (N, V), energy E (N,)) → the critic's input, as :func:`_to_net`."""
    if _lhcb_shares(setup):  # fractions × E_tot (MeV) → Box-Cox + standardised, differentiable
        cell_t = transforms["cells"]
        return lambda out, e: cell_t.forward(out.reshape(len(out), -1) * e[:, None]).view(
            -1, 30, 30
        )
    if kind == "calochallenge":
        m = setup.model
        if m.critic_mev_scale > 0:
            return lambda out, e: torch.log1p(out * e[:, None] / m.critic_mev_scale)
        return lambda out, _e: torch.log1p(out / m.frac_scale)
    return lambda out, _e: out


def _load_training(path: str | os.PathLike, setup: CaloSetup, max_events: int):
    showers = load_showers(path, stop=max_events or None)
    kind, layout = setup.model_kind, showers.layout
    _check_layout(kind, layout, path)
    thresholds = _cell_thresholds(layout)
    cells = _threshold(np.asarray(showers.cells, np.float64), thresholds)
    cond = _condition(kind, showers, thresholds)
    keep = np.ones(len(cells), bool)
    if kind != "lhcb-conv":
        cols = [cond[:, None]]
        if _conditions_response(setup):  # (E_inc, E_tot)
            cols.append(cells.sum(1)[:, None])
        if setup.model.condition_layers:  # occupancy flags [, layer shares of E_tot]
            layers = _layer_energies(cells, layout)
            cols.append((layers > 0).astype(np.float64))
            if _uses_flow(setup):
                total = layers.sum(1, keepdims=True)
                cols.append(np.divide(layers, total, out=np.zeros_like(layers), where=total > 0))
        cond = np.concatenate(cols, 1) if len(cols) > 1 else cond
        shared = _shared_energy(cond, _n_energies(setup))
        keep &= shared > 0  # events with nothing above threshold are dropped
        if kind == "dense" and setup.data.max_total_energy > 0:
            keep &= shared <= setup.data.max_total_energy
    elif _lhcb_shares(setup):  # E_tot is shared: empty images have nothing to share
        keep &= cells.sum(1) > 0
    require(keep.sum() >= 2, f"'{path}' has fewer than 2 usable events for the {kind} model")
    return showers, cells[keep], cond[keep]


def _recorded_noise(showers: Showers) -> list[float]:
    """The per-layer electronic noise σ_n (MeV) of the file's provenance (``geometry_json``'s
    ``noise_mev``, written by ``detgan simulate calo``); empty when the file records none."""
    raw = showers.meta.get("attrs", {}).get("geometry_json")
    return list(json.loads(raw).get("noise_mev") or []) if raw else []


def _cell_noise(showers: Showers, path: Any) -> list[float]:
    """σ_n (V,) MeV per cell: the per-layer electronic noise of the file's provenance
    (one entry per layer slot)."""
    layout, noise = showers.layout, _recorded_noise(showers)
    require(
        _max_noise(showers) > 0,
        f"cell_noise needs the cells' electronic noise, which '{path}' does not record "
        "(files of detgan simulate calo with noise do); drop --set cell_noise=true",
    )
    names = getattr(layout, "layer_names", None)
    out = np.zeros(layout.n_cells)
    for k in range(len(names)) if names is not None else layout.relevant_layers:
        out[layout.layer_slice(k)] = noise[k]
    return out.tolist()


def _max_noise(showers: Showers) -> float:
    """The largest recorded σ_n (MeV); 0 for a noiseless file or one without provenance."""
    return max(_recorded_noise(showers) or [0.0])


def _check_noiseless(showers: Showers, path: Any) -> None:
    """``hit_quanta`` measures the quantum as the smallest non-zero cell, which noise hides."""
    sigma = _max_noise(showers)
    require(
        sigma <= 0,
        f"hit_quanta needs noiseless cells, but '{path}' records electronic noise (σ_n up to "
        f"{sigma:.0f} MeV per cell): set hit_quanta=false (the quick/full presets of detgan "
        "train calo do so on such a file, with cell_noise, keep_flags, critic_mev_scale=100)",
    )


def _check_layout(kind: str, layout: Any, path: Any) -> None:
    is_lhcb = getattr(layout, "name", "") == "lhcb-ecal"
    if kind == "calochallenge":  # any file of showers in layers, labelled by E_inc
        require(
            not is_lhcb,
            f"'{path}' is an LHCb ECAL file, conditioned on the track; use --model lhcb-conv",
        )
    if kind == "lhcb-conv":
        require(is_lhcb, f"'{path}' is not an LHCb ECAL (30x30) file; --model lhcb-conv needs one")


# ----------------------------------------------------------------------------------- training
def straight_through_threshold(frac: Tensor, energy: Tensor, thresholds: Tensor) -> Tensor:
    """Fractions (N, V) of energies (N,) with the cells below ``thresholds`` (V,) MeV zeroed in
    the forward pass; the backward pass is the identity (straight-through estimator)."""
    keep = (frac * energy[:, None] >= thresholds).to(frac.dtype)
    return frac + (frac * keep - frac).detach()


def straight_through_hits(
    frac: Tensor, energy: Tensor, quantum: Tensor, rng: torch.Generator
) -> Tensor:
    """Fractions (N, V) of energies (N,) as whole numbers of deposits of ``quantum`` (N,) MeV:
    k ~ Poisson(frac·E/q) forwards, k·q/E; the backward pass is the identity (E[k·q/E] = frac).
    ``rng``: a CPU generator (the draw is made on the CPU)."""
    scale = (energy / quantum)[:, None]
    rate = (frac.detach() * scale).clamp_min(0.0)
    hits = torch.poisson(rate.cpu(), generator=rng).to(frac.device)
    return frac + (hits / scale - frac).detach()


def rescaled_to(
    kept: Tensor,
    total: Tensor,
    layer_sizes: Sequence[int] | None = None,
    hottest_of: Tensor | None = None,
) -> Tensor:
    """Rows of ``kept`` (N, V) scaled to sum to ``total`` (N,); rows summing to 0 unchanged
    (and without a gradient through the scale). With ``layer_sizes`` (cells per layer, flat
    order) each layer's cells are scaled to its ``total`` (N, L) instead. With ``hottest_of``
    (N, V; ``keep_flags``) a layer with nothing kept but a positive total gets the total in
    the cell where ``hottest_of`` is largest."""
    sizes = list(layer_sizes or [kept.shape[1]])
    total = total.reshape(len(kept), len(sizes))
    after = layer_sums(kept, sizes)
    ok = after > 0
    scale = torch.where(ok, total / torch.where(ok, after, 1.0), 1.0)
    out = kept * torch.repeat_interleave(scale, torch.tensor(sizes, device=kept.device), dim=1)
    if hottest_of is None:
        return out
    fill = []
    for k, part in enumerate(torch.split(hottest_of, sizes, dim=1)):
        one_hot = nn.functional.one_hot(part.argmax(1), part.shape[1]).to(out.dtype)
        lost = (~ok[:, k] & (total[:, k] > 0)).to(out.dtype)
        fill.append(one_hot * (lost * total[:, k])[:, None])
    return out + torch.cat(fill, 1)


def energy_balance_weights(log_e: Tensor, bins: int = 30) -> Tensor:
    """(N,) sampling weights 1/count of each event's bin among ``bins`` equal-width bins of
    ``log_e`` (the standardised log energy): drawn with these weights, every occupied bin is
    equally frequent (each discrete energy of CaloChallenge dataset 1 has its own bin)."""
    lo, hi = float(log_e.min()), float(log_e.max())
    width = (hi - lo) / bins if hi > lo else 1.0
    which = ((log_e - lo) / width).long().clamp(0, bins - 1)
    counts = torch.bincount(which, minlength=bins).double()
    return 1.0 / counts[which]


def _problem(
    kind: str,
    setup: CaloSetup,
    x: Tensor,
    y: Tensor,
    noise_dim: int,
    energy: Tensor | None = None,
    thresholds: Tensor | None = None,
    transforms: dict[str, Transform] | None = None,
    sizes: Sequence[int] = (),
    quanta: Tensor | None = None,
    noise: Tensor | None = None,
):
    """Real batches drawn with replacement; fakes carry the real batch's labels. Given
    ``energy`` (N,), the batch also carries the energy E that the fractions refer to (lhcb-conv
    with ``energy_sharing``: the real event's E_tot; its ``transforms`` map fakes to network
    units). ``sizes``: cells per layer (flat order), for ``keep_layers``; ``quanta`` (N,) MeV:
    the events' deposit quanta, for ``hit_quanta``; ``noise`` (V,) MeV: σ_n per cell, for
    ``cell_noise``."""
    require(not _lhcb_shares(setup) or energy is not None, "energy_sharing needs E_tot")
    to_net = _fake_to_net(kind, setup, transforms)
    gate = setup.data.threshold_fakes and (kind != "lhcb-conv" or _lhcb_shares(setup))
    require(not gate or energy is not None, "threshold_fakes needs the events' energies")

    weights = energy_balance_weights(y[:, 0].cpu()) if setup.data.balance_energies else None

    def sample_real(n: int, rng: torch.Generator) -> dict[str, Tensor]:
        if weights is None:
            idx = torch.randint(len(x), (n,), generator=rng)
        else:
            idx = torch.multinomial(weights, n, replacement=True, generator=rng)
        idx = idx.to(x.device)
        batch = {"x": x[idx], "y": y[idx]}
        if quanta is not None:
            batch["q"] = quanta[idx]
        return batch if energy is None else {**batch, "e": energy[idx]}

    def sample_fake(gen: nn.Module, batch: dict[str, Tensor], rng: torch.Generator):
        z = torch.randn(len(batch["y"]), noise_dim, generator=rng).to(x.device)
        out = gen(z, batch["y"])
        flat = out.reshape(len(out), -1)
        if quanta is not None:
            out = straight_through_hits(flat, batch["e"], batch["q"], rng)
        if noise is not None:
            eps = torch.randn(flat.shape, generator=rng).to(flat.device)
            out = out.reshape(flat.shape) + eps * noise / batch["e"][:, None]
        if gate:
            read_out = out.reshape(len(out), -1)
            out = straight_through_threshold(read_out, batch["e"], thresholds)
            if setup.data.keep_layers:
                hottest = read_out if setup.data.keep_flags else None
                out = rescaled_to(out, layer_sums(flat, sizes), sizes, hottest)
                if hottest is not None:  # a filled cell must pass, too
                    out = straight_through_threshold(out, batch["e"], thresholds)
            elif setup.data.keep_total:
                out = rescaled_to(out, flat.sum(1))
        return to_net(out, batch.get("e")), batch["y"]

    extra = None
    if kind == "dense" and setup.data.sparsity_weight > 0:
        w = setup.data.sparsity_weight

        def extra(fake: Tensor, _batch: dict[str, Tensor]) -> Tensor:
            return w * torch.sqrt(fake.clamp_min(0) + 1e-12).sum(1).mean()

    return AdversarialProblem(sample_real, sample_fake, lambda c, u, lab: c(u, lab), extra)


def pretrain_regressor(
    regressor: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float, batch: int, seed: int
) -> float:
    """[C18] regressor pre-training: ``steps`` Adam updates of E[(y − R(x))²]; refrozen after.
    Returns the last batch loss (NaN for 0 steps)."""
    if steps == 0:
        return float("nan")
    regressor.requires_grad_(True).train()
    opt = torch.optim.Adam(regressor.parameters(), lr=lr)
    rng, loss = torch.Generator().manual_seed(seed + 1), torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=rng).to(x.device)
        loss = torch.mean((regressor(x[idx]) - y[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    regressor.requires_grad_(False).eval()
    if not math.isfinite(loss.item()):
        raise DetganError("regressor pre-training diverged; lower regressor_lr")
    return loss.item()


def train_layer_flow(
    flow: LayerEnergyFlow,
    e_inc: Tensor,
    layers: Tensor,
    steps: int,
    seed: int,
    batch: int = 512,
    lr: float = 1e-3,
    progress: bool = False,
) -> float:
    """Stage 1 of ``layer_flow``: fit the flow's scales, then ``steps`` Adam updates (cosine
    learning rate) of the negative log-likelihood of the layer energies (N, L) given E_inc
    (N,); an empty layer's coordinate is fresh N(0, 1) noise in every batch. Returns the mean
    loss of the last 100 steps."""
    flow.fit_scales(e_inc, layers)
    u, c, filled = flow.encode(e_inc, layers)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng, losses = torch.Generator().manual_seed(seed + 2), []
    from tqdm.auto import tqdm

    for _ in tqdm(range(steps), desc="stage-1 flow", disable=not progress, dynamic_ncols=True):
        idx = torch.randint(len(u), (batch,), generator=rng)
        ub = torch.where(filled[idx], u[idx], torch.randn(batch, u.shape[1], generator=rng))
        loss = -flow.log_prob(ub, c[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    flow.eval()
    tail = float(np.mean(losses[-100:]))
    if not math.isfinite(tail):
        raise DetganError(
            "the stage-1 layer flow diverged (non-finite loss); check the training energies"
        )
    return tail


def draw_flow_conditions(flow_state: dict[str, Any], cond: np.ndarray, seed: int) -> np.ndarray:
    """Stage 1 of ``layer_flow``: raw conditions (E_inc, E_tot, flags) → (E_inc, E_tot,
    flags, shares) with the layer energies of the occupied layers drawn from the flow (E_tot
    their sum)."""
    flow = _layer_flow(flow_state)
    n_layers = flow.n_layers
    e_inc = torch.from_numpy(cond[:, 0])
    filled = torch.from_numpy(cond[:, 2 : 2 + n_layers] > 0)
    layers = flow.draw(e_inc, filled, torch.Generator().manual_seed(seed)).numpy()
    total = layers.sum(1, keepdims=True)
    shares = np.divide(layers, total, out=np.zeros_like(layers), where=total > 0)
    return np.concatenate([cond[:, :1], total, cond[:, 2 : 2 + n_layers], shares], 1)


def _layer_flow(flow_state: dict[str, Any]) -> LayerEnergyFlow:
    """The stage-1 flow stored in a checkpoint's ``extra["layer_flow"]``."""
    state = flow_state["state"]
    flow = LayerEnergyFlow(
        len(state["mean"]), int(flow_state["hidden"]), int(flow_state["couplings"])
    )
    flow.load_state_dict(state)
    return flow.eval()


def _resolved(setup: CaloSetup, n: int) -> CaloSetup:
    t = setup.train
    if setup.data.epochs <= 0:
        return setup
    it = max(1, math.ceil(setup.data.epochs * n / (t.batch_size * t.n_critic)))
    return dataclasses.replace(setup, train=t.replace(iterations=it))


def train_calo(
    setup: CaloSetup,
    data_path: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    until: int | None = None,
) -> Path:
    """Train a calorimeter WGAN on a showers file (any format :func:`load_showers` reads).

    Writes ``RUN/checkpoint.pt``, ``history.jsonl`` and ``config.json``; ``resume`` continues
    exactly from the checkpoint (its stored configuration wins). ``until`` stops early at that
    iteration. Returns the run directory.
    """
    for name in ("balance_energies", "keep_layers", "hit_quanta", "cell_noise"):
        require(
            setup.model_kind != "lhcb-conv" or not getattr(setup.data, name),
            f"{name} is for dense and calochallenge (showers in layers), not lhcb-conv",
        )
    require(
        not setup.data.keep_flags or bool(getattr(setup.model, "condition_layers", False)),
        "keep_flags keeps the drawn layer flags; it needs condition_layers=true",
    )
    sigma = None  # checked before anything is written
    if (setup.data.cell_noise or setup.data.hit_quanta) and not resume:
        first = load_showers(data_path, stop=1)
        if setup.data.hit_quanta:
            _check_noiseless(first, data_path)
        if setup.data.cell_noise:
            sigma = _cell_noise(first, data_path)
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume, overwrite)
    dev = resolve_device(device)
    state = load_checkpoint(run_dir) if resume else None
    if state is not None:
        setup = CaloSetup.from_json(state["config_json"])
    n_max = int(state["extra"]["n_read"]) if state is not None else setup.data.max_events
    showers, cells, cond = _load_training(data_path, setup, n_max)
    setup, kind = _resolved(setup, len(cells)), setup.model_kind
    if state is not None:
        transforms = {k: transform_from_state(v) for k, v in state["extra"]["transforms"].items()}
    else:
        transforms = _fit_transforms(kind, cells, cond, setup)
    n_e = _n_energies(setup)
    x = _to_net(kind, setup, transforms, cells, cond).to(dev)
    y = _label(kind, transforms, cond, n_e, _uses_flow(setup)).to(dev)
    energy, thr, stage1 = None, _cell_thresholds(showers.layout), {}
    if kind != "lhcb-conv":
        energy = torch.from_numpy(_shared_energy(cond, n_e)).float().to(dev)
    elif _lhcb_shares(setup):
        energy = torch.from_numpy(cells.sum(1)).float().to(dev)
        stage1 = lhcb_stage1(cells, cond)
        thr = np.full(cells.shape[1], stage1["cell_threshold"])
    thresholds = torch.from_numpy(thr).float().to(dev)
    with torch.random.fork_rng(devices=[]):  # weight initialisation from the run's seed only
        torch.manual_seed(setup.train.seed)
        sizes = _layer_sizes(showers.layout)
        models = build_calo_models(kind, setup.model, sizes)
        if _lhcb_shares(setup):  # softmax logits start from the mean training shower
            _set_lhcb_prior(models["generator"], setup, transforms, showers, cells, cond)
        if kind != "lhcb-conv":  # mean shares per energy, if voxel_prior / layer_prior
            models["generator"].fit_priors(y[:, 0].cpu(), torch.from_numpy(cells))
    models = {k: m.to(dev) for k, m in models.items()}
    extra = {
        "transforms": {k: t.state_dict() for k, t in transforms.items()},
        "layout_json": json.dumps(showers.layout.to_dict()),
        "format": detect_format(data_path),
        "n_read": len(showers),
        "n_train": len(cells),
        **({"response_table": response_table(cond, n_e)} if _draws_conditions(setup) else {}),
        **stage1,
        "data_path": str(Path(data_path).resolve()),
        "package_version": __version__,
    }
    stored, quanta, noise = (state or {}).get("extra", {}), None, None
    if setup.data.hit_quanta:  # measured on the training file (the stored table on resume)
        first = _energies(cond, 1)  # E_inc (E_tot for dense)
        extra["hit_quanta"] = stored.get("hit_quanta") or hit_quanta(cells, first)
        quanta = torch.from_numpy(quantum_at(extra["hit_quanta"], first)).float().to(dev)
    if setup.data.cell_noise:  # from the file's provenance (stored on resume)
        extra["cell_noise"] = stored.get("cell_noise") or sigma
        noise = torch.tensor(extra["cell_noise"]).float().to(dev)
    if _uses_flow(setup):  # stage 1, trained once before the WGAN and kept on resume
        if state is not None:
            extra["layer_flow"] = state["extra"]["layer_flow"]
        else:
            extra["layer_flow"] = _fit_layer_flow(setup, cond, cells, showers.layout, progress)
    if state is None and "regressor" in models:
        d, t = setup.data, setup.train
        extra["regressor_loss"] = pretrain_regressor(
            models["regressor"], x, y, d.regressor_steps, d.regressor_lr, t.batch_size, t.seed
        )
    noise_dim = models["generator"].noise_dim
    trainer = Trainer(
        {"generator": models["generator"], "critic": models["critic"]},
        _problem(
            kind, setup, x, y, noise_dim, energy, thresholds, transforms, sizes, quanta, noise
        ),
        setup.train,
        run_dir,
        config_json=setup.to_json(),
        extra=extra,
        progress=progress,
    )
    if state is not None:
        trainer.resume()
    else:
        (run_dir / CONFIG_NAME).write_text(json.dumps(json.loads(setup.to_json()), indent=2))
    trainer.run(until=until)
    return run_dir


def _fit_layer_flow(setup: CaloSetup, cond, cells, layout, progress: bool) -> dict[str, Any]:
    """Train the ``layer_flow`` stage 1 on the training events (seeded by the run's seed);
    its weights, sizes and last loss for the checkpoint's ``extra``."""
    hidden, couplings = 128, 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.train.seed + 3)
        flow = LayerEnergyFlow(len(layout.relevant_layers), hidden, couplings)
    layers = torch.from_numpy(_layer_energies(cells, layout))
    steps = setup.model.layer_flow_steps
    loss = train_layer_flow(
        flow, torch.from_numpy(cond[:, 0]), layers, steps, setup.train.seed, progress=progress
    )
    return {"state": flow.state_dict(), "hidden": hidden, "couplings": couplings, "loss": loss}


# --------------------------------------------------------------------------------- generation
@dataclasses.dataclass
class CaloModel:
    """A trained calorimeter run ready to sample: generator (EMA weights when kept), setup,
    transforms, the training file's layout and format (in ``extra``) and the iteration."""

    generator: nn.Module
    setup: CaloSetup
    transforms: dict[str, Transform]
    layout: Any
    extra: dict[str, Any]
    step: int
    device: torch.device

    @property
    def kind(self) -> str:
        return self.setup.model_kind

    def sample(self, cond: np.ndarray, seed: int = 0, batch_size: int = 4096) -> np.ndarray:
        """Showers (N, V) MeV, thresholded like the reference, for raw conditions ``cond``:
        E_tot (N,) MeV (dense), (N, 5) = p, point (mm) (lhcb-conv), E_inc (N,) MeV.
        lhcb-conv with ``energy_sharing``: fractions × E_tot (:func:`lhcb_totals`, seed + 7),
        cells below ``extra["cell_threshold"]`` zeroed. With ``keep_total`` the cells that
        pass are scaled back to the shower's total before the threshold."""
        cond = np.asarray(cond, np.float64)
        n_e = _n_energies(self.setup)
        if _draws_conditions(self.setup) and cond.ndim == 1:  # stage 1: E_tot, empty layers
            energy = np.where(cond > 0, cond, 1.0)
            cond = draw_conditions(self.extra["response_table"], energy, int(seed) + 7)
            if _uses_flow(self.setup):  # E_tot and the layer shares from the stage-1 flow
                cond = draw_flow_conditions(self.extra["layer_flow"], cond, int(seed) + 11)
        rng = torch.Generator().manual_seed(int(seed))
        y = _label(self.kind, self.transforms, cond, n_e, _uses_flow(self.setup))
        out = []
        with torch.no_grad():
            for start in range(0, len(y), batch_size):
                yb = y[start : start + batch_size]
                z = torch.randn(len(yb), self.generator.noise_dim, generator=rng)
                out.append(self.generator(z.to(self.device), yb.to(self.device)).double().cpu())
        raw = torch.cat(out)
        keep = self.setup.data.keep_total or self.setup.data.keep_layers
        if _lhcb_shares(self.setup):
            e_tot = lhcb_totals(self.extra, cond, int(seed) + 7)
            cells = raw.reshape(len(raw), -1).numpy() * e_tot[:, None]
            return _threshold(cells, float(self.extra["cell_threshold"]), keep)
        if self.kind == "lhcb-conv":
            cells = self.transforms["cells"].inverse(raw.reshape(len(raw), -1)).clamp_min(0).numpy()
        else:
            shared = np.clip(_shared_energy(cond, n_e), 0, None)
            cells = (raw * torch.from_numpy(shared)[:, None]).numpy()
        sizes = _layer_sizes(self.layout) if self.setup.data.keep_layers else None
        read_out = cells  # the detector's response: deposits, then electronic noise
        if self.setup.data.hit_quanta:
            q = quantum_at(self.extra["hit_quanta"], _energies(cond, 1))
            read_out = whole_hits(read_out, q, int(seed) + 13)
        if self.setup.data.cell_noise:
            eps = np.random.default_rng(int(seed) + 17).standard_normal(cells.shape)
            read_out = read_out + eps * np.asarray(self.extra["cell_noise"])
        flags = self.setup.data.keep_flags
        return _threshold(read_out, _cell_thresholds(self.layout), keep, sizes, cells, flags)


def load_calo_model(run_dir: str | os.PathLike, device: str = "cpu") -> CaloModel:
    """Rebuild the generator of a calorimeter run from ``RUN/checkpoint.pt`` (weights_only)."""
    dev = resolve_device(device)
    state, setup = load_run(run_dir, CaloSetup, "calo")
    extra = state["extra"]
    layout = layout_from_dict(json.loads(extra["layout_json"]))
    transforms = {k: transform_from_state(v) for k, v in extra["transforms"].items()}
    gen = build_calo_models(setup.model_kind, setup.model, _layer_sizes(layout))["generator"]
    weights = state["models"]
    gen.load_state_dict(weights.get("generator_ema", weights["generator"]))
    return CaloModel(gen.to(dev).eval(), setup, transforms, layout, extra, int(state["step"]), dev)


def _parse_energy(spec: str, n: int | None, seed: int) -> np.ndarray | None:
    """Energies (MeV) from ``uniform:LOW,HIGH`` or one VALUE; None when ``spec`` is a file."""
    if spec.startswith("uniform:"):
        try:
            low, high = (float(v) for v in spec[len("uniform:") :].split(","))
        except ValueError:
            raise DetganError(
                f"energy '{spec}' must look like uniform:10000,300000 (MeV)"
            ) from None
        require(0 < low < high, f"energy '{spec}' needs 0 < LOW < HIGH (MeV)")
        require(n is not None and n >= 1, "give the number of events with -n for uniform energies")
        return np.random.default_rng(seed).uniform(low, high, n)
    try:
        value = float(spec)
    except ValueError:
        return None
    require(value > 0 and math.isfinite(value), f"energy {spec} must be a positive number (MeV)")
    require(n is not None and n >= 1, "give the number of events with -n for a fixed energy")
    return np.full(n, value)


def conditions_from_spec(
    model: CaloModel, spec: str, n: int | None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(raw conditions for :meth:`CaloModel.sample`, energy (N,) MeV, per-event conditions to
    write). ``spec``: a showers FILE (its first n events: E_tot / LHCb conditions / E_inc, its
    incident energies and conditions are carried over), ``uniform:LOW,HIGH`` or VALUE in MeV
    (E_tot for dense, E_inc for calochallenge)."""
    spec = str(spec).strip()
    energy = _parse_energy(spec, n, seed)
    if energy is not None:
        require(
            model.kind != "lhcb-conv",
            "lhcb-conv runs need 5 conditions per event: give --energy FILE.npz (an LHCb file)",
        )
        return energy, energy, {}
    if not Path(spec).exists():
        raise DetganError(f"energy '{spec}' is neither a file, uniform:LOW,HIGH nor a number")
    showers = load_showers(spec, stop=n)
    require(
        n is None or n <= len(showers),
        f"'{spec}' holds only {len(showers)} events; use -n {len(showers)} or fewer",
    )
    require(
        showers.layout.n_cells == model.layout.n_cells,
        f"'{spec}' has {showers.layout.n_cells} cells per event, the run {model.layout.n_cells}; "
        "take the conditions from a file of the training geometry",
    )
    cond = _condition(model.kind, showers, _cell_thresholds(model.layout))
    return cond, showers.energy, dict(showers.conditions)


def generate_calo(
    run_dir: str | os.PathLike,
    n: int | None,
    energy_spec: str,
    seed: int,
    out: str | os.PathLike,
    *,
    device: str = "cpu",
    overwrite: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> Path:
    """Write generated showers to ``out`` in the training file's format (CaloChallenge in →
    CaloChallenge out, LHCb .npz, detgan native for ATLAS clusters); provenance in attributes.

    ``shard`` = (i, K): only the i-th of K contiguous parts of those showers (the same
    conditions and showers; :mod:`detgan.io.shards` gives the range, attributes and merge)."""
    from detgan.distributed import windowed
    from detgan.io.shards import shard_attrs, shard_range

    model = load_calo_model(run_dir, device)
    cond, energy, conditions = conditions_from_spec(model, energy_spec, n, seed)
    check_output_path(out, overwrite)  # before the work, not after it
    start, stop = shard_range(len(energy), shard[1], shard[0])
    cells = windowed(model, start, stop, len(energy)).sample(cond, seed)[start:stop]
    part = {k: v[start:stop] for k, v in conditions.items()}
    showers = Showers(
        energy[start:stop],
        cells.astype(np.float32),
        model.layout,
        part,
        {"source_format": "generated"},
    )
    attrs = {
        "generator": f"detgan calo WGAN ({model.kind})",
        "run_dir": str(run_dir),
        "step": model.step,
        "seed": int(seed),
        "energy_spec": str(energy_spec),
        "config_json": model.setup.to_json(),
        "detgan_version": __version__,
        **shard_attrs(len(energy), shard[1], shard[0]),
    }
    return save_showers(showers, out, model.extra["format"], attrs=attrs, overwrite=overwrite)


# -------------------------------------------------------------------------------------- study
def run_calo_study(
    run_dir: str | os.PathLike,
    reference: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_events: int = 10000,
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    classifier: bool = True,
    progress: Any = None,
) -> dict[str, Any]:
    """The evaluation of [K] (and of [C18] for LHCb runs) on the existing evaluation layer.

    Generates one shower per reference event (first ``n_events``; same conditions), then
    :func:`detgan.evaluate.evaluate_files` with the training file for the nearest-neighbour
    check: mean images per layer, per-cell mean/variance, correlation matrix and its MSE, the
    physics variates of the family (ATLAS §2.4, LHCb §2.3, CaloChallenge §2.1) with
    separation powers, classifier two-sample test, each next to its reference-vs-reference
    floor. Writes ``report.html``, ``summary.md``, ``summary.json`` and ``study.json`` to
    ``out_dir``; returns the summary.
    """
    from detgan.evaluate import EvaluationSettings, evaluate_files
    from detgan.io.showers import count_events
    from detgan.report import write_report

    model = load_calo_model(run_dir, device)
    n = min(int(n_events), count_events(reference))
    train = model.extra.get("data_path")
    train = train if train and Path(train).is_file() else None
    if train and Path(train).resolve() == Path(reference).resolve():
        raise DetganError("--reference is the training file; give a held-out file")
    suffix = ".npz" if model.extra["format"] == "lhcb" else ".h5"
    with tempfile.TemporaryDirectory(prefix="detgan-calo-") as tmp:
        cand = generate_calo(run_dir, n, str(reference), seed, Path(tmp) / f"generated{suffix}",
                             device=device)  # fmt: skip
        settings = EvaluationSettings(classifier=classifier, max_events=n, seed=seed)
        evaluation = evaluate_files(reference, cand, settings, train=train, progress=progress)
    study = {
        "run": str(run_dir),
        "model_kind": model.kind,
        "step": model.step,
        "setup": json.loads(model.setup.to_json()),
        "n_events": n,
        "seed": int(seed),
    }
    evaluation.summary["study"] = study
    write_report(evaluation, out_dir, overwrite=overwrite,
                 extra_files={"study.json": json.dumps(study, indent=1)})  # fmt: skip
    return evaluation.summary


# ---------------------------------------------------------------------------- parameter study
#: The parameter study of [K]: each parameter varied alone around the preset.
PARAMETER_GRID: dict[str, tuple[float, ...]] = {
    "depth": (1, 2, 3),
    "latent_dim": (1, 10, 100),
    "n_critic": (1, 5, 10),
    "gp_weight": (0.0, 10.0),
}


def _pooled_sample(runs: list[Path], reference: Any, n: int) -> Showers:
    """One shower per reference event, event i from run i mod S (samples of S seeds pooled)."""
    parts = []
    for k, run in enumerate(runs):
        model = load_calo_model(run)
        cond, energy, conditions = conditions_from_spec(model, str(reference), n, seed=k)
        parts.append((model.sample(cond, seed=k), energy, conditions, model))
    cells = np.empty_like(parts[0][0])
    for k, part in enumerate(parts):
        cells[k :: len(runs)] = part[0][k :: len(runs)]
    _, energy, conditions, model = parts[0]
    return Showers(energy, cells.astype(np.float32), model.layout, conditions, {})


def run_parameter_study(
    data_path: str | os.PathLike,
    reference: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    preset: str = "quick",
    grid: dict[str, tuple[float, ...]] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    n_events: int = 5000,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: Any = None,
) -> list[dict[str, Any]]:
    """[K]'s parameter study for the dense model: for each value of each parameter of ``grid``
    (default :data:`PARAMETER_GRID`), one run per seed (``out_dir/<name>=<value>/seed<S>``),
    samples pooled over the seeds, compared with ``reference`` (no classifier). Returns and
    writes (``out_dir/parameter_study.json``) rows: setting, correlation MSE, per-cell
    Δ log(1+var), mean separation power of the physics variates. Existing runs are reused."""
    from detgan.evaluate import EvaluationSettings, evaluate_files

    say, out, rows = progress or (lambda _m: None), Path(out_dir), []
    base = calo_preset("dense", preset).with_overrides(dict(overrides or {}))
    settings = EvaluationSettings(classifier=False, fpd=False, max_events=n_events)
    for name, values in (grid or PARAMETER_GRID).items():
        for value in values:
            runs = []
            for seed in seeds:
                run = out / f"{name}={value}" / f"seed{seed}"
                if not (run / "checkpoint.pt").is_file():
                    say(f"training {name}={value}, seed {seed}")
                    setup = base.with_overrides({name: value, "seed": seed})
                    train_calo(setup, data_path, run, device=device, overwrite=True, progress=False)
                runs.append(run)
            pooled = _pooled_sample(runs, reference, n_events)
            cand = out / f"{name}={value}" / "pooled.h5"
            save_showers(pooled, cand, "native", overwrite=True)
            m = evaluate_files(reference, cand, settings).summary["families"]
            m = next(iter(m.values()))["metrics"]
            seps = [v.get("separation") for v in m["features"].values()]
            seps = [s for s in seps if s is not None and math.isfinite(s)]
            rows.append({
                "parameter": name, "value": value, "seeds": list(seeds),
                "correlation_mse": m["correlation"]["mse"],
                "cell_log1p_var_diff": m["cells"].get("log1p_var_diff_mean"),
                "mean_separation_power": float(np.mean(seps)) if seps else float("nan"),
            })  # fmt: skip
    (out / "parameter_study.json").write_text(json.dumps(rows, indent=1))
    return rows
