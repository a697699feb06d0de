"""Calorimeter WGAN runs: training on the trainer, exact resume, generation to the training
file's format, the generate dispatch, Box-Cox, presets and the study."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch

from detgan.cli import main
from detgan.io.showers import load_showers, save_showers
from detgan.models.calo import build_calo_models
from detgan.sim.calorimeter import CaloSimConfig, file_attrs, simulate
from detgan.studies.calo import (
    ATLAS_THRESHOLDS,
    CALO_PRESETS,
    NOISY_FILE_SETTINGS,
    _fit_boxcox,
    _layer_energies,
    calo_preset,
    conditions_from_spec,
    draw_conditions,
    draw_flow_conditions,
    draw_response,
    energy_balance_weights,
    generate_calo,
    hit_quanta,
    is_calo_run,
    lhcb_totals,
    load_calo_model,
    quantum_at,
    response_table,
    run_calo_study,
    straight_through_hits,
    straight_through_threshold,
    train_calo,
)
from detgan.train import load_checkpoint
from detgan.utils import DetganError

TINY = {
    "dense": {"latent_dim": 8, "hidden": 16, "iterations": 4, "batch_size": 16},
    "lhcb-conv": {"latent_dim": 8, "channels": 8, "iterations": 2, "batch_size": 8,
                  "regressor_steps": 3},
    "calochallenge": {"latent_dim": 8, "hidden": 16, "iterations": 3, "batch_size": 16,
                      "layer_flow_steps": 20},
}  # fmt: skip
FILES = {"dense": "atlas.h5", "lhcb-conv": "lhcb.npz", "calochallenge": "cc.h5"}
GEOMETRY = {
    "dense": "atlas-cluster",
    "lhcb-conv": "lhcb-ecal",
    "calochallenge": "calochallenge-1-photons",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("calo")
    for kind, geo in GEOMETRY.items():
        cfg = CaloSimConfig(geometry=geo, batch_size=60)
        attrs = file_attrs(cfg, 3, 60) if kind == "dense" else None  # as detgan simulate calo
        save_showers(simulate(cfg, 60, seed=3), root / FILES[kind], attrs=attrs)
    return root


def _cli_sets(kind: str) -> list[str]:
    """TINY[kind] as ``--set NAME=VALUE`` arguments."""
    return [x for k, v in TINY[kind].items() for x in ("--set", f"{k}={v}")]


def _setup(kind: str, **extra):
    return calo_preset(kind, "quick").with_overrides({**TINY[kind], "checkpoint_every": 2, **extra})


@pytest.mark.parametrize("kind", ["dense", "lhcb-conv", "calochallenge"])
def test_train_and_generate_in_the_training_format(kind, data, tmp_path):
    run = train_calo(_setup(kind), data / FILES[kind], tmp_path / "run", progress=False)
    assert is_calo_run(run)
    assert len((run / "history.jsonl").read_text().splitlines()) == TINY[kind]["iterations"]
    out = tmp_path / ("gen.npz" if kind == "lhcb-conv" else "gen.h5")
    generate_calo(run, 20, str(data / FILES[kind]), 1, out)
    ref, gen = load_showers(data / FILES[kind], stop=20), load_showers(out)
    assert gen.cells.shape == (20, ref.n_cells) and np.isfinite(gen.cells).all()
    assert gen.meta["source_format"] == ref.meta["source_format"]
    np.testing.assert_allclose(gen.energy, ref.energy)
    assert (gen.cells >= 0).all()
    if kind == "calochallenge":  # readable by the public evaluation: exactly two datasets
        with h5py.File(out) as f:
            assert sorted(f) == ["incident_energies", "showers"]
            assert f["incident_energies"].shape == (20, 1)


def test_dense_generation_shares_the_energy_then_thresholds(data, tmp_path):
    run = train_calo(_setup("dense"), data / "atlas.h5", tmp_path / "run", progress=False)
    model = load_calo_model(run)
    e_tot = np.array([5e4, 1e5, 2e5])
    thr = model.sample(e_tot, seed=0)
    assert (thr.sum(1) <= e_tot * (1 + 1e-5)).all()  # thresholds only remove energy
    assert (thr.sum(1) >= 0.5 * e_tot).all()
    mid = thr[:, :21]
    assert ((mid == 0) | (mid >= 200.0)).all()  # Middle threshold 200 MeV after generation


def test_straight_through_threshold_zeroes_forward_and_passes_gradient():
    frac = torch.tensor([[0.5, 0.3, 0.15, 0.05]], requires_grad=True)
    energy, thr = torch.tensor([1000.0]), torch.tensor([100.0, 100.0, 100.0, 100.0])
    out = straight_through_threshold(frac, energy, thr)
    torch.testing.assert_close(out.detach(), torch.tensor([[0.5, 0.3, 0.15, 0.0]]))
    (out * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    torch.testing.assert_close(frac.grad, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # identity


def test_keep_total_scales_the_cells_that_pass_back_to_the_shower_total():
    from detgan.studies.calo import _threshold, rescaled_to

    cells = np.array([[50.0, 30.0, 15.0, 5.0], [5.0, 5.0, 0.0, 0.0]])
    np.testing.assert_array_equal(_threshold(cells, 10.0), [[50, 30, 15, 0], [0, 0, 0, 0]])
    kept = _threshold(cells, 10.0, keep_total=True)
    np.testing.assert_allclose(kept, [[50 / 0.95, 30 / 0.95, 15 / 0.95, 0], [0, 0, 0, 0]])
    frac = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.02, 0.02, 0.0, 0.0]], requires_grad=True)
    gated = straight_through_threshold(frac, torch.tensor([100.0, 100.0]), torch.full((4,), 10.0))
    out = rescaled_to(gated, frac.sum(1))
    torch.testing.assert_close(out.detach(), torch.from_numpy(kept / 100).float())
    out.sum().backward()
    assert torch.isfinite(frac.grad).all() and frac.grad[0].abs().sum() > 0
    # keep_layers: each layer (here cells 0–1 and 2–3) keeps its own total
    by_layer = _threshold(cells, 10.0, keep_total=True, layer_sizes=[2, 2])
    np.testing.assert_allclose(by_layer, [[50, 30, 20, 0], [0, 0, 0, 0]])
    layers = torch.stack([frac[:, :2].sum(1), frac[:, 2:].sum(1)], 1).detach()
    out = rescaled_to(gated, layers, [2, 2])
    torch.testing.assert_close(out.detach(), torch.from_numpy(by_layer / 100).float())


def test_keep_flags_puts_a_lost_layer_into_its_hottest_cell():
    """``keep_flags``: a layer whose cells all fall below the threshold keeps its energy in
    its hottest cell (numpy generation and torch training alike); empty layers stay empty."""
    from detgan.studies.calo import _threshold, rescaled_to

    read_out = np.array([[50.0, 30.0, 4.0, 7.0, 0.0, 0.0], [5.0, 25.0, 12.0, 3.0, 0.0, 0.0]])
    before = np.array([[50.0, 30.0, 5.0, 6.0, 0.0, 0.0], [6.0, 24.0, 12.0, 3.0, 0.0, 0.0]])
    sizes = [2, 2, 2]
    plain = _threshold(read_out, 10.0, True, sizes, before)
    np.testing.assert_allclose(plain, [[50, 30, 0, 0, 0, 0], [0, 30, 15, 0, 0, 0]])
    kept = _threshold(read_out, 10.0, True, sizes, before, keep_flags=True)
    np.testing.assert_allclose(kept, [[50, 30, 0, 11, 0, 0], [0, 30, 15, 0, 0, 0]])
    low = before * [1, 1, 0.4, 0.4, 1, 1]  # a lost layer of 4.4 < 10: stays empty
    np.testing.assert_allclose(_threshold(read_out, 10.0, True, sizes, low, keep_flags=True)[0],
                               [50, 30, 0, 0, 0, 0])  # fmt: skip
    frac = torch.from_numpy(before / 100).float().requires_grad_(True)
    gated = straight_through_threshold(
        torch.from_numpy(read_out / 100).float(), torch.full((2,), 100.0), torch.full((6,), 10.0)
    )
    total = torch.stack([frac[:, 2 * k : 2 * k + 2].sum(1) for k in range(3)], 1)
    out = rescaled_to(gated, total, sizes, hottest_of=torch.from_numpy(read_out).float())
    torch.testing.assert_close(out.detach(), torch.from_numpy(kept / 100).float())
    out[0, 3].backward()  # the filled cell is the layer's total: its gradient reaches the layer
    torch.testing.assert_close(frac.grad[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(DetganError, match="keep_flags needs keep_layers"):
        calo_preset("dense", "quick").with_overrides({"keep_flags": True})
    with pytest.raises(DetganError, match="it needs condition_layers=true"):
        train_calo(
            _setup("dense", keep_layers=True, keep_flags=True), "no.h5", "nowhere", progress=False
        )


def test_hit_quanta_measures_the_spot_energy_of_the_reference_showers():
    """The reference simulation's cells are whole numbers of spots of E_vis/N_s
    (calorimeter.md §2): the measured quantum is N_s's spot energy at every discrete energy."""
    from detgan.sim.calorimeter import n_spots

    cfg = CaloSimConfig(geometry="calochallenge-1-photons", batch_size=600)
    showers = simulate(cfg, 600, seed=5)  # ≈ 40 per energy; a/√E per shower below 1 GeV
    table = hit_quanta(np.asarray(showers.cells, np.float64), showers.energy)
    e = np.exp(table["log_e"])
    np.testing.assert_allclose(e, np.unique(showers.energy), rtol=1e-9)  # one group per energy
    spot = e / n_spots(e, cfg.geo.medium, cfg.max_spots)
    np.testing.assert_allclose(np.exp(table["log_q"]), spot, rtol=0.1)
    np.testing.assert_allclose(np.exp(table["log_q"])[e > 1e5], spot[e > 1e5], rtol=0.01)
    mid = np.sqrt(e[-2] * e[-1])  # log–log interpolation between the measured energies
    q = np.exp(table["log_q"])
    got = quantum_at(table, np.array([mid, e[-1]]))
    np.testing.assert_allclose(got, [np.sqrt(q[-2] * q[-1]), q[-1]])
    many = np.exp(np.linspace(0, 5, 500))  # continuous energies: quantile groups
    grouped = hit_quanta(np.tile(many[:, None], (1, 3)), many, groups=10)
    assert len(grouped["log_e"]) == 10
    np.testing.assert_allclose(grouped["log_q"], grouped["log_e"], atol=1e-9)


def test_straight_through_hits_are_whole_deposits_on_average_the_fractions():
    frac = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]], requires_grad=True)
    energy, q = torch.tensor([100.0]), torch.tensor([2.0])
    out = straight_through_hits(frac, energy, q, torch.Generator().manual_seed(0))
    hits = out.detach() * 100.0 / 2.0
    torch.testing.assert_close(hits, hits.round())  # whole numbers of 2 MeV deposits
    assert out[0, -1] == 0  # no energy, no deposit
    (out * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    torch.testing.assert_close(frac.grad, torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]))
    many = frac.detach().repeat(20000, 1)
    rng = torch.Generator().manual_seed(1)
    drawn = straight_through_hits(many, energy.repeat(20000), q.repeat(20000), rng)
    torch.testing.assert_close(drawn.mean(0), frac.detach()[0], atol=3e-3, rtol=0)  # Poisson mean
    empty = (drawn[:, 3] == 0).float().mean()
    assert abs(float(empty) - np.exp(-2.5)) < 0.01  # 0.05·100/2 = 2.5 expected deposits


def test_hit_quanta_generates_whole_deposits_and_keeps_the_layer_energies(data, tmp_path):
    setup = _setup("calochallenge", hit_quanta=True, threshold_fakes=True)
    run = train_calo(setup, data / "cc.h5", tmp_path / "run", progress=False)
    model = load_calo_model(run)
    table = model.extra["hit_quanta"]
    assert len(table["log_e"]) == len(np.unique(load_showers(data / "cc.h5").energy))
    e_inc = np.full(40, 65536.0)
    q = quantum_at(table, e_inc)[:, None]
    loose = model.setup.data.replace(keep_total=False, keep_layers=False)
    model.setup = dataclasses.replace(model.setup, data=loose)
    cells = model.sample(e_inc, seed=0)
    np.testing.assert_allclose(cells / q, np.round(cells / q), atol=1e-6)
    assert (cells > 0).any()
    model.setup = dataclasses.replace(model.setup, data=loose.replace(keep_layers=True))
    kept = model.sample(e_inc, seed=0)
    layout = model.layout
    model.setup = dataclasses.replace(model.setup, data=loose.replace(hit_quanta=False))
    model.layout = dataclasses.replace(layout, e_min=0.0)  # the layer energies before the hits
    before = model.sample(e_inc, seed=0)
    got, want = _layer_energies(kept, layout), _layer_energies(before, layout)
    np.testing.assert_allclose(got[got > 0], want[got > 0], rtol=1e-5)
    with pytest.raises(DetganError, match="hit_quanta is for dense and calochallenge"):
        train_calo(_setup("lhcb-conv", hit_quanta=True), data / "lhcb.npz", tmp_path / "l")
    assert not (tmp_path / "l").exists()


def test_cell_noise_adds_the_files_electronic_noise_before_the_threshold(data, tmp_path):
    """``cell_noise``: σ_n per cell from the training file's provenance (atlas-cluster: Middle
    66.7, Strip 20, Presampler 40, Back 66.7 MeV); a generated cell far above its threshold
    is the noiseless one plus N(0, σ_n)."""
    setup = _setup("dense", cell_noise=True)
    run = train_calo(setup, data / "atlas.h5", tmp_path / "run", progress=False)
    model = load_calo_model(run)
    sigma = np.asarray(model.extra["cell_noise"])
    layout = model.layout
    want = {"middle": 200 / 3, "strip": 20.0, "presampler": 40.0, "back": 200 / 3}
    for k, name in enumerate(layout.layer_names):
        np.testing.assert_allclose(sigma[layout.layer_slice(k)], want[name])
    e_tot = np.full(400, 2e5)
    noisy = model.sample(e_tot, seed=0)
    model.setup = dataclasses.replace(model.setup, data=setup.data.replace(cell_noise=False))
    clean = model.sample(e_tot, seed=0)
    far = clean > 200.0 + 6 * sigma  # passes with and without noise
    assert far.sum() > 1000
    pull = (noisy - clean)[far] / np.broadcast_to(sigma, clean.shape)[far]
    assert abs(pull.mean()) < 0.1 and abs(pull.std() - 1.0) < 0.1
    with pytest.raises(DetganError, match="cell_noise needs the cells' electronic noise"):
        train_calo(_setup("calochallenge", cell_noise=True), data / "cc.h5", tmp_path / "c")
    assert not (tmp_path / "c").exists()  # ds-1 photons have no noise: refused first
    bare = tmp_path / "bare.h5"  # saved without the provenance of detgan simulate calo
    save_showers(load_showers(data / "atlas.h5"), bare)
    with pytest.raises(DetganError, match="does not record"):
        train_calo(setup, bare, tmp_path / "b")


@pytest.mark.parametrize("kind", ["dense", "calochallenge"])
def test_threshold_fakes_shows_the_critic_thresholded_showers(kind, data, tmp_path):
    """With ``threshold_fakes`` the critic sees no generated cell below its threshold (as for
    the real cells), and every generator parameter still gets a gradient."""
    from detgan.studies import calo as study

    fractions = {
        "condition_response": False,
        "condition_layers": False,
        "critic_mev_scale": 0.0,
        "layer_flow": False,
        "critic_occupancy": False,
        "keep_layers": False,
        "voxel_noise_slope": False,
    }  # one label, fractions
    setup = _setup(kind, threshold_fakes=True, **(fractions if kind == "calochallenge" else {}))
    showers, cells, cond = study._load_training(data / FILES[kind], setup, 0)
    models = build_calo_models(kind, setup.model, study._layer_sizes(showers.layout))
    gen = models["generator"]
    energy = torch.from_numpy(cond).float()
    thr = torch.from_numpy(study._cell_thresholds(showers.layout)).float()
    x = torch.zeros(len(cond), showers.layout.n_cells)  # only shapes matter here
    y = torch.zeros(len(cond), 1)
    problem = study._problem(kind, setup, x, y, gen.noise_dim, energy, thr)
    rng = torch.Generator().manual_seed(0)
    batch = problem.sample_real(32, rng)
    assert set(batch) == {"x", "y", "e"}
    batch["e"][:16] = 100.0  # 100 MeV events: the untrained generator's cells fall below
    fake, _ = problem.sample_fake(gen, batch, rng)
    frac = fake if kind == "dense" else setup.model.frac_scale * torch.expm1(fake)
    cells_mev = frac.detach() * batch["e"][:, None]
    assert ((cells_mev == 0) | (cells_mev >= thr * (1 - 1e-5))).all()
    assert (cells_mev[:16] == 0).any() and (cells_mev[16:] > 0).any()
    models["critic"](fake, batch["y"]).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


def test_calochallenge_critic_mev_units_put_the_threshold_at_one_input_value():
    """With ``critic_mev_scale`` the real and generated voxels reach the critic as
    log(1 + E/m) in MeV, identically for both, so E_min = 1 MeV is log 2 at every E_inc."""
    from detgan.studies import calo as study

    setup = _setup("calochallenge", critic_mev_scale=1.0)
    e_inc = np.array([256.0, 4194304.0])
    cells = np.zeros((2, 368))
    cells[:, 10] = 1.0  # one voxel at the threshold in both events
    cells[:, 200] = e_inc * 0.9
    real = study._to_net("calochallenge", setup, {}, cells, e_inc)
    fake = study._fake_to_net("calochallenge", setup)(
        torch.from_numpy(cells / e_inc[:, None]).float(), torch.from_numpy(e_inc).float()
    )
    torch.testing.assert_close(real, fake, rtol=1e-5, atol=1e-5)
    assert real[0, 10] == pytest.approx(np.log(2.0)) and real[1, 10] == pytest.approx(np.log(2.0))
    frac_setup = _setup(
        "calochallenge", critic_mev_scale=0.0, critic_occupancy=False
    )  # fractions: the same voxel differs by 10⁴ in input
    frac = study._to_net("calochallenge", frac_setup, {}, cells, e_inc)
    assert frac[0, 10] > 100 * frac[1, 10]


def test_draw_response_takes_the_same_or_the_nearest_incident_energies():
    e_inc = np.repeat([256.0, 1024.0, 4096.0], 50)
    resp = np.repeat([0.8, 0.9, 1.0], 50) + np.tile(np.linspace(0, 0.01, 50), 3)
    table = response_table(np.stack([e_inc, e_inc * resp], 1))
    got = draw_response(table, np.full(400, 1024.0), seed=0)
    assert ((got >= 0.9 - 1e-9) & (got <= 0.91 + 1e-9)).all()  # only the 1024 MeV events
    assert len(np.unique(got)) > 30  # and many of them
    between = draw_response(table, np.full(200, 300.0), seed=1, k=8)  # nearest 8 in log E
    assert np.isin(np.round(between, 9), np.round(resp, 9)).all()
    assert ((between < 0.82) | (between >= 0.9)).all() and (between < 0.82).any()
    np.testing.assert_array_equal(draw_response(table, [5e6], seed=2, k=4) >= 1.0, [True])
    older = {"log10_e_inc": table["log10_energy"], "response": table["response"]}  # session 2
    np.testing.assert_array_equal(draw_response(older, e_inc, 4), draw_response(table, e_inc, 4))


def test_calochallenge_condition_response_shares_the_drawn_total(data, tmp_path):
    """Two stages: E_tot/E_inc drawn from the training events, the WGAN shares E_tot."""
    setup = _setup("calochallenge", layer_flow=False, keep_layers=False, hit_quanta=False)
    run = train_calo(setup, data / "cc.h5", tmp_path / "run", progress=False)
    model = load_calo_model(run)
    table = model.extra["response_table"]
    assert len(table["response"]) == model.extra["n_train"]
    e_inc = np.full(20, 65536.0)
    cells = model.sample(e_inc, seed=0)
    total = cells.sum(1) / e_inc
    assert (total <= max(table["response"]) * (1 + 1e-5)).all() and (total > 0).all()
    r = draw_response(table, e_inc, 0 + 7)  # the draw sample() makes
    assert setup.data.keep_total  # quick: what the threshold removes is given back to the rest
    np.testing.assert_allclose(total, r, rtol=1e-5)
    loose = model.setup.data.replace(keep_total=False)
    model.setup = dataclasses.replace(model.setup, data=loose)
    assert (model.sample(e_inc, seed=0).sum(1) / e_inc <= r * (1 + 1e-5)).all()  # only removes
    flags = draw_conditions(table, e_inc, 0 + 7)[:, 2:]  # condition_layers: the same event's
    layout = model.layout  # empty layers stay empty
    layers = _layer_energies(cells, layout)
    assert flags.shape == layers.shape and (layers[flags == 0] == 0).all()


def test_layer_flow_is_trained_first_saved_and_gives_the_layer_energies(data, tmp_path):
    """``layer_flow``: the stage-1 flow is trained before the WGAN and stored in the
    checkpoint; generated showers keep the drawn empty layers and the flow's E_tot (with
    ``keep_total``), and their layer energies are the flow's where nothing is thresholded or,
    with ``keep_layers`` (the presets), wherever a voxel passes."""
    setup = _setup("calochallenge", layer_flow_steps=20, keep_layers=False, hit_quanta=False)
    run = train_calo(setup, data / "cc.h5", tmp_path / "run", progress=False)
    model = load_calo_model(run)
    stage1 = model.extra["layer_flow"]
    assert np.isfinite(stage1["loss"]) and set(stage1["state"]) >= {"mean", "std", "masks"}
    e_inc = np.full(40, 65536.0)
    cells = model.sample(e_inc, seed=0)
    cond = draw_flow_conditions(
        stage1, draw_conditions(model.extra["response_table"], e_inc, 7), 11
    )
    n_layers = len(model.layout.relevant_layers)
    assert cond.shape == (40, 2 + 2 * n_layers)
    np.testing.assert_allclose(cond[:, 2 + n_layers :].sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cells.sum(1), cond[:, 1], rtol=1e-5)
    layout = model.layout
    layers = _layer_energies(cells, layout)
    assert (layers[cond[:, 2 : 2 + n_layers] == 0] == 0).all()
    loose = model.setup.data.replace(keep_total=False)
    model.setup = dataclasses.replace(model.setup, data=loose)
    model.layout = dataclasses.replace(layout, e_min=0.0)  # no threshold: exactly the flow's
    layers = model.sample(e_inc, seed=0)
    drawn = cond[:, 1:2] * cond[:, 2 + n_layers :]
    got = _layer_energies(layers, layout)
    np.testing.assert_allclose(got, drawn, rtol=1e-4, atol=1e-6 * drawn.max())
    model.layout = layout  # keep_layers: every layer with a voxel above E_min keeps the flow's
    model.setup = dataclasses.replace(model.setup, data=loose.replace(keep_layers=True))
    kept = model.sample(e_inc, seed=0)
    got = _layer_energies(kept, layout)
    np.testing.assert_allclose(got[got > 0], drawn[got > 0], rtol=1e-5)


def test_dense_condition_layers_draw_empty_layers_by_cluster_energy(data, tmp_path):
    setup = _setup("dense", condition_layers=True)
    run = train_calo(setup, data / "atlas.h5", tmp_path / "run", progress=False)
    model = load_calo_model(run)
    table = model.extra["response_table"]
    assert set(table) == {"log10_energy", "layers"} and len(table["layers"][0]) == 4
    e_tot = np.full(30, 10.0 ** np.median(table["log10_energy"]))
    cells = model.sample(e_tot, seed=2)
    flags = draw_conditions(table, e_tot, 2 + 7)
    layout = model.layout
    layers = _layer_energies(cells, layout)
    assert flags.shape == (30, 5) and (layers[flags[:, 1:] == 0] == 0).all()
    np.testing.assert_allclose(flags[:, 0], e_tot)


def test_draw_conditions_take_response_and_empty_layers_from_one_event():
    e_inc = np.full(100, 1024.0)
    resp = np.linspace(0.5, 1.0, 100)
    empty0 = resp < 0.75  # layer 0 empty exactly in the low-response events
    cond = np.column_stack([e_inc, e_inc * resp, ~empty0, np.ones(100)])
    got = draw_conditions(response_table(cond), np.full(2000, 1024.0), seed=3)
    assert got.shape == (2000, 4) and set(np.unique(got[:, 2:])) <= {0.0, 1.0}
    np.testing.assert_array_equal(got[:, 2] == 0, got[:, 1] / got[:, 0] < 0.75)
    assert 0.45 < (got[:, 2] == 0).mean() < 0.55 and (got[:, 3] == 1).all()


@pytest.mark.parametrize("sharing", [False, True])
def test_lhcb_samples_keep_negative_conditions(sharing, data, tmp_path):
    """Momenta and face points can be negative: sample() must not alter them."""
    setup = _setup(
        "lhcb-conv", energy_sharing=sharing, aligned_prior=sharing, threshold_fakes=sharing
    )
    run = train_calo(setup, data / "lhcb.npz", tmp_path / "r", progress=False)
    model = load_calo_model(run)
    cond = np.tile([[-800.0, -300.0, 20000.0, -1000.0, -500.0]], (4, 1))
    clipped = np.where(cond > 0, cond, 1.0)  # what an earlier sample() fed the generator
    assert not np.allclose(model.sample(cond, seed=1), model.sample(clipped, seed=1))


def test_lhcb_energy_sharing_shares_the_drawn_total_above_the_threshold(data, tmp_path):
    """Two stages: E_tot = |p| · r, r from a training event of similar |p|; the WGAN shares
    E_tot over the 900 cells; cells below the threshold derived from the data are zeroed."""
    setup = _setup("lhcb-conv", energy_sharing=True, threshold_fakes=True)
    assert setup.model.aligned_prior  # the quick preset's softmax start follows the track
    run = train_calo(setup, data / "lhcb.npz", tmp_path / "run", progress=False)
    model = load_calo_model(run)
    gen = load_checkpoint(run)["models"]["generator"]
    assert gen["aligned_log"].std() > 1 and gen["label_std"].min() > 0  # set from the data
    ref = load_showers(data / "lhcb.npz")
    nonzero = ref.cells[ref.cells > 0]
    thr = model.extra["cell_threshold"]
    assert nonzero.min() <= thr <= np.quantile(nonzero, 0.01)
    cond = conditions_from_spec(model, str(data / "lhcb.npz"), 40)[0]
    cells = model.sample(cond, seed=3)
    e_tot = lhcb_totals(model.extra, cond, 3 + 7)  # the draw sample() makes
    p = np.linalg.norm(cond[:, :3], axis=1)
    assert np.isin(
        np.round(e_tot / p, 6), np.round(model.extra["response_table"]["response"], 6)
    ).all()
    assert ((cells == 0) | (cells >= thr)).all() and (cells.sum(1) > 0).any()
    below = e_tot - cells.sum(1)  # what the threshold removed: < thr per zeroed cell
    assert (below >= -1e-5 * e_tot).all()
    assert (below <= (cells == 0).sum(1) * thr + 1e-5 * e_tot).all()
    kept = _setup("lhcb-conv", energy_sharing=True, threshold_fakes=True, keep_total=True)
    model = load_calo_model(train_calo(kept, data / "lhcb.npz", tmp_path / "k", progress=False))
    cells = model.sample(cond, seed=3)
    assert ((cells == 0) | (cells >= thr)).all()
    some = cells.sum(1) > 0
    assert some.any()
    np.testing.assert_allclose(cells.sum(1)[some], e_tot[some], rtol=1e-5)  # float32 softmax


def test_lhcb_energy_sharing_shows_the_critic_thresholded_mev_images(data, tmp_path):
    """Fakes reach the critic as transforms["cells"](fractions × E_tot of the real event), the
    cells below the threshold at the real empty-cell value, and still pass gradients."""
    from detgan.studies import calo as study

    setup = _setup("lhcb-conv", energy_sharing=True, threshold_fakes=True)
    _, cells, cond = study._load_training(data / "lhcb.npz", setup, 0)
    t = study._fit_transforms("lhcb-conv", cells, cond, setup)
    x = study._to_net("lhcb-conv", setup, t, cells, cond)
    y = study._label("lhcb-conv", t, cond)
    e = torch.from_numpy(cells.sum(1)).float()
    models = build_calo_models("lhcb-conv", setup.model)
    thr = study.lhcb_stage1(cells, cond)["cell_threshold"]
    problem = study._problem("lhcb-conv", setup, x, y, 8, e, torch.full((900,), thr), t)
    rng = torch.Generator().manual_seed(0)
    batch = problem.sample_real(16, rng)
    assert set(batch) == {"x", "y", "e"}
    fake, _ = problem.sample_fake(models["generator"], batch, rng)
    assert fake.shape == (16, 30, 30)
    mev = t["cells"].inverse(fake.detach().reshape(16, -1).double())
    empty = t["cells"].forward(torch.zeros(1, dtype=torch.float64))
    assert ((mev.abs() < 1e-2) | (mev >= thr * (1 - 1e-4))).all()
    torch.testing.assert_close(fake.detach().min().double(), empty[0].float().double())
    torch.testing.assert_close(mev.sum(1), batch["e"].double(), rtol=0.05, atol=900 * thr)
    models["critic"](fake, batch["y"]).sum().backward()
    assert all(p.grad is not None for p in models["generator"].parameters())


def test_energy_balance_weights_make_every_energy_equally_frequent():
    """Discrete energies with 50:10:2 events are drawn 1:1:1 with the weights; a continuous
    uniform spread keeps (nearly) equal weights."""
    log_e = torch.tensor([0.0] * 50 + [1.0] * 10 + [2.0] * 2)
    w = energy_balance_weights(log_e)
    share = torch.stack([w[log_e == v].sum() for v in (0.0, 1.0, 2.0)]) / w.sum()
    torch.testing.assert_close(share, torch.full((3,), 1 / 3, dtype=share.dtype))
    flat = energy_balance_weights(torch.linspace(-1, 1, 3000))
    assert float(flat.max() / flat.min()) < 1.1


def test_balance_energies_trains_and_is_refused_for_lhcb(data, tmp_path):
    setup = _setup("calochallenge", balance_energies=True)
    run = train_calo(setup, data / "cc.h5", tmp_path / "r", progress=False)
    assert load_calo_model(run).setup.data.balance_energies
    with pytest.raises(DetganError, match="balance_energies is for dense and calochallenge"):
        train_calo(
            _setup("lhcb-conv", balance_energies=True),
            data / "lhcb.npz",
            tmp_path / "l",
            progress=False,
        )
    assert not (tmp_path / "l").exists()  # refused before anything is written
    with pytest.raises(DetganError, match="keep_layers is for dense and calochallenge"):
        train_calo(_setup("lhcb-conv", keep_layers=True), data / "lhcb.npz", tmp_path / "l")
    assert not (tmp_path / "l").exists()


def test_priors_are_fitted_on_the_training_showers_and_saved(data, tmp_path):
    """``layer_prior``/``voxel_prior``: the saved tables are the log mean shares of the
    training showers (layer shares and each layer's voxel shares, over the events with energy
    in that layer, sum to ≈ 1 per grid point)."""
    setup = _setup("calochallenge", layer_flow=False, layer_prior=True, voxel_prior=True)
    run = train_calo(setup, data / "cc.h5", tmp_path / "r", progress=False)
    gen = load_calo_model(run).generator
    layers = gen.layer_prior.table.exp()
    torch.testing.assert_close(layers.sum(1), torch.ones(len(layers)), rtol=1e-3, atol=1e-4)
    first = gen.voxel_prior.table.exp()[:, : gen.layer_sizes[0]].sum(1)
    seen = first > 1e-3  # grid points with a layer-0 shower nearby (the rest: floor only)
    assert seen.sum() >= len(first) // 2
    torch.testing.assert_close(first[seen], torch.ones(int(seen.sum())), rtol=1e-3, atol=1e-4)
    assert gen.layer_prior.grid[0] < gen.layer_prior.grid[-1]


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("dense", {"voxel_prior": True}),
        ("lhcb-conv", {"energy_sharing": True, "threshold_fakes": True}),
        (
            "calochallenge",
            {
                "layer_flow": False,
                "layer_prior": True,
                "voxel_prior": True,
                "critic_occupancy": True,
                "balance_energies": True,
            },
        ),
        ("calochallenge", {"layer_flow": True, "layer_flow_steps": 20, "keep_layers": True}),
        ("calochallenge", {"hit_quanta": True}),
        ("dense", {"cell_noise": True}),
    ],
)
def test_resume_is_exact(kind, extra, data, tmp_path):
    setup = _setup(kind, iterations=6, **extra)
    straight = train_calo(setup, data / FILES[kind], tmp_path / "a", progress=False)
    part = train_calo(setup, data / FILES[kind], tmp_path / "b", progress=False, until=2)
    train_calo(setup, data / FILES[kind], part, resume=True, progress=False)
    wa, wb = (load_checkpoint(r)["models"]["generator"] for r in (straight, part))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_regressor_is_pretrained_and_saved_in_the_critic(data, tmp_path):
    run = train_calo(_setup("lhcb-conv"), data / "lhcb.npz", tmp_path / "r", progress=False)
    state = load_checkpoint(run)
    assert np.isfinite(state["extra"]["regressor_loss"])
    assert any(k.startswith("regressor.") for k in state["models"]["critic"])


def test_boxcox_fit_inverts_and_keeps_lambda_non_negative():
    rng = np.random.default_rng(0)
    cells = np.where(rng.random((50, 900)) < 0.7, 0.0, rng.lognormal(3, 2, (50, 900)))
    bc = _fit_boxcox(cells, shift=1.0)
    assert bc.lam >= 0
    x = torch.from_numpy(cells)
    torch.testing.assert_close(bc.inverse(bc.forward(x)), x, rtol=1e-9, atol=1e-9)


def test_every_model_has_three_presets():
    assert {k: sorted(v) for k, v in CALO_PRESETS.items()} == {
        k: ["full", "paper", "quick"] for k in ("dense", "lhcb-conv", "calochallenge")
    }
    paper = calo_preset("dense", "paper")
    assert (paper.model.latent_dim, paper.model.hidden, paper.model.depth) == (100, 128, 3)
    assert (paper.train.n_critic, paper.train.gp_weight, paper.data.epochs) == (5, 10.0, 1000)


def test_wrong_file_for_model_is_a_one_line_error(data, tmp_path):
    with pytest.raises(DetganError, match="is an LHCb ECAL file, .*use --model lhcb-conv"):
        train_calo(_setup("calochallenge"), data / "lhcb.npz", tmp_path / "r", progress=False)
    with pytest.raises(DetganError, match="is not an LHCb ECAL"):
        train_calo(_setup("lhcb-conv"), data / "atlas.h5", tmp_path / "r", progress=False)


def test_calochallenge_presets_generate_the_noise_of_a_noisy_file(data):
    for name in ("quick", "full"):
        noisy = calo_preset("calochallenge", name, data / "atlas.h5")
        assert noisy == calo_preset("calochallenge", name).with_overrides(NOISY_FILE_SETTINGS)
        assert noisy.data.cell_noise and noisy.data.keep_flags and not noisy.data.hit_quanta
        assert calo_preset("calochallenge", name, data / "cc.h5") == calo_preset(
            "calochallenge", name
        )  # noiseless: whole deposits
    for kind, name in (("dense", "quick"), ("calochallenge", "paper")):  # no hit_quanta there
        assert calo_preset(kind, name, data / "atlas.h5") == calo_preset(kind, name)


def test_calochallenge_model_trains_on_atlas_clusters_with_their_noise(data, tmp_path, capsys):
    """The layered WGAN takes any file of showers in layers: on atlas-cluster its preset
    generates the file's noise (hit_quanta is refused there: noise hides the quantum) and it
    generates ATLAS clusters with their per-layer thresholds."""
    with pytest.raises(DetganError, match="hit_quanta needs noiseless cells.*67 MeV"):
        train_calo(_setup("calochallenge"), data / "atlas.h5", tmp_path / "q")
    assert not (tmp_path / "q").exists()
    run, out = tmp_path / "run", tmp_path / "gen.h5"
    sets = _cli_sets("calochallenge")
    argv = ["train", "calo", "--model", "calochallenge", "--data", str(data / "atlas.h5")]
    assert main([*argv, *sets, "-o", str(run), "--device", "cpu"]) == 0  # the quick preset
    assert "records electronic noise: the quick preset generates it" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["cell_noise"] and not config["data"]["hit_quanta"]
    generate_calo(run, 30, str(data / "atlas.h5"), 1, out)
    gen = load_showers(out)
    assert gen.layout.name == "atlas-cluster" and gen.cells.shape == (30, 89)
    for k, name in enumerate(gen.layout.layer_names):
        layer = gen.cells[:, gen.layout.layer_slice(k)]
        assert ((layer == 0) | (layer >= ATLAS_THRESHOLDS[name])).all()
    assert (gen.cells.sum(1) > 0).all()


def test_cli_train_generate_dispatch(data, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "gen.h5"
    sets = _cli_sets("calochallenge")
    argv = ["train", "calo", "--model", "calochallenge", "--data", str(data / "cc.h5")]
    assert main([*argv, *sets, "-o", str(run), "--quiet", "--device", "cpu"]) == 0
    assert json.loads((run / "config.json").read_text())["model_kind"] == "calochallenge"
    assert main(["generate", str(run), "-n", "7", "--energy", "uniform:1000,50000",
                 "-o", str(out), "--device", "cpu"]) == 0  # fmt: skip
    gen = load_showers(out)
    assert len(gen) == 7 and (gen.energy >= 1000).all() and (gen.energy <= 50000).all()
    assert main(["generate", str(run), "-n", "7", "--energy", "nope", "-o", str(out)]) == 2
    assert "neither a file, uniform:LOW,HIGH nor a number" in capsys.readouterr().err


@pytest.mark.slow
def test_study_writes_report_with_the_klein_metrics(data, tmp_path):
    root = tmp_path
    train_file = root / "train.h5"
    save_showers(
        simulate(CaloSimConfig(geometry="atlas-cluster", batch_size=80), 80, 4), train_file
    )
    run = train_calo(_setup("dense"), train_file, root / "run", progress=False)
    summary = run_calo_study(run, data / "atlas.h5", root / "rep", n_events=60, classifier=False)
    metrics = summary["families"]["atlas"]["metrics"]
    assert {"cells", "correlation", "features", "memorisation"} <= set(metrics)
    assert "r_mid" in metrics["features"] and "mse" in metrics["correlation"]
    assert (root / "rep" / "report.html").is_file() and (root / "rep" / "study.json").is_file()
    with pytest.raises(DetganError, match="is the training file"):
        run_calo_study(run, train_file, root / "rep2", n_events=10, classifier=False)


def test_parameter_study_pools_seeds_and_reports_rows(data, tmp_path):
    argv = ["study", "calo-params", "--data", str(data / "atlas.h5"), "--reference",
            str(data / "atlas.h5"), "-o", str(tmp_path / "ps"), "--seeds", "2", "--events", "30",
            "--set", "iterations=2", "--set", "hidden=8", "--set", "batch_size=8"]  # fmt: skip
    from detgan.studies import calo

    grid = {"latent_dim": (1, 10)}
    old, calo.PARAMETER_GRID = calo.PARAMETER_GRID, grid
    try:
        assert main([*argv, "--device", "cpu"]) == 0
    finally:
        calo.PARAMETER_GRID = old
    rows = json.loads((tmp_path / "ps" / "parameter_study.json").read_text())
    assert [(r["parameter"], r["value"]) for r in rows] == [("latent_dim", 1), ("latent_dim", 10)]
    assert all(np.isfinite(r["correlation_mse"]) for r in rows)
    assert (tmp_path / "ps" / "latent_dim=1" / "seed1" / "checkpoint.pt").is_file()
