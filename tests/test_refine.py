"""Refiner training, refining files, the study's metrics and a miniature end-to-end study."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from detgan.io.native import read_arrays, read_attrs
from detgan.sim.airshower import make_config
from detgan.sim.run import write_airshower_file
from detgan.studies.refine import (
    REFINE_PRESETS,
    RefineSetup,
    from_net,
    load_refiner,
    refine_arrays,
    refine_file,
    refine_preset,
    refiner_problem,
    split_index,
    to_net,
    train_refiner,
)
from detgan.studies.refine_study import (
    STUDY_PRESETS,
    TIMING_EDGES,
    auc_without_each,
    classifier_diagnostics,
    energy_performance,
    one_feature_auc,
    run_refine_study,
)
from detgan.utils import DetganError

TINY = {
    "channels": 4,
    "blocks": 1,
    "critic_width": 8,
    "batch_size": 8,
    "n_critic": 2,
    "checkpoint_every": 2,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Matched 'sim' and 'data' files of 40 events (same seed)."""
    d = tmp_path_factory.mktemp("airshower")
    for variant in ("sim", "data"):
        write_airshower_file(
            make_config("paper", variant), 40, 5, d / f"{variant}.h5", workers=1, progress=False
        )
    return d / "sim.h5", d / "data.h5"


@pytest.fixture(scope="module")
def run(files, tmp_path_factory):
    setup = refine_preset("quick").with_overrides({**TINY, "iterations": 4})
    return train_refiner(setup, *files, tmp_path_factory.mktemp("r") / "run", progress=False)


def test_presets_are_valid_and_paper_matches_section_3():
    paper = refine_preset("paper")
    t = paper.train
    assert (t.iterations, t.batch_size, t.n_critic, t.gp_weight, t.lr_generator) == (
        10000,
        100,
        10,
        5.0,
        1e-4,
    )
    assert (t.beta1, t.beta2) == (0.5, 0.999)
    assert paper.data.self_regularisation == 0.0 and not paper.model.input_skip
    assert set(REFINE_PRESETS) == set(STUDY_PRESETS) == {"paper", "full", "quick"}
    for setup in REFINE_PRESETS.values():
        assert RefineSetup.from_json(setup.to_json()) == setup
    with pytest.raises(DetganError, match="unknown setting 'chanels'; valid settings:"):
        paper.with_overrides({"chanels": 3})
    with pytest.raises(DetganError, match="unknown refiner preset 'fast'"):
        refine_preset("fast")


def test_full_preset_trains_and_refines_with_its_neighbourhood_levels(files, tmp_path):
    """``full`` (at toy sizes) trains, resumes its config and refines with the context levels:
    the refiner's lift sees the trace and the four level channels."""
    setup = refine_preset("full").with_overrides({**TINY, "iterations": 2})
    assert setup.model.refiner_levels and setup.model.level_inputs == "context"
    train_refiner(setup, *files, tmp_path / "run", progress=False)
    model = load_refiner(tmp_path / "run")
    assert model.setup == setup and model.refiner.lift.in_channels == 5
    traces = read_arrays(files[0], ["traces"], stop=4)["traces"]
    refined = model.refine(traces)
    assert refined.shape == traces.shape and np.isfinite(refined).all()
    assert ((refined.sum(-1) > 0) <= (traces.sum(-1) > 0)).all()  # no station switched on


def test_net_units_round_trip_and_split():
    s = np.array([0.0, 0.5, 9.0, 1e6], dtype=np.float32)
    u = to_net(s)
    torch.testing.assert_close(u, torch.log10(1 + torch.as_tensor(s)))
    np.testing.assert_allclose(from_net(u), s, rtol=1e-5)
    assert split_index(100, 0.25) == 75 and split_index(10, 0.0) == 10
    with pytest.raises(DetganError, match="leaves nothing to train on"):
        split_index(1, 0.5)


def test_problem_draws_data_with_a_sim_source_and_regularises():
    sim, data = torch.zeros(10, 2, 2, 4), torch.ones(6, 2, 2, 4)
    problem = refiner_problem(sim, data, self_regularisation=2.0)
    batch = problem.sample_real(5, torch.Generator().manual_seed(0))
    assert torch.equal(batch["x"], torch.ones(5, 2, 2, 4))
    assert torch.equal(batch["source"], torch.zeros(5, 2, 2, 4))
    fake, label = problem.sample_fake(lambda u: u + 0.5, batch, torch.Generator())
    assert label is None and torch.equal(fake, torch.full((5, 2, 2, 4), 0.5))
    # w · mean over features |ψ(u) − u| = 2 · 0.5
    assert problem.extra_generator_loss(fake, batch).item() == pytest.approx(1.0)
    assert refiner_problem(sim, data).extra_generator_loss is None
    tied = refiner_problem(sim + 0.5, data, integral_regularisation=3.0)  # sources with signal
    batch = tied.sample_real(5, torch.Generator().manual_seed(0))
    fake, _ = tied.sample_fake(lambda u: u, batch, torch.Generator())
    assert tied.extra_generator_loss(fake, batch).item() == 0.0  # unchanged integrals: no cost
    assert tied.extra_generator_loss(fake + 0.1, batch).item() > 0


def test_training_writes_history_and_resumes_exactly(files, run, tmp_path):
    lines = (run / "history.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {"C1", "C2", "regularisation"} <= set(json.loads(lines[-1]))
    setup = refine_preset("quick").with_overrides({**TINY, "iterations": 4})
    other = tmp_path / "run2"
    train_refiner(setup, *files, other, progress=False, until=2)
    train_refiner(setup, *files, other, progress=False, resume=True)
    a, b = load_refiner(run), load_refiner(other)
    for (k, p), q in zip(a.refiner.state_dict().items(), b.refiner.state_dict().values()):
        torch.testing.assert_close(p, q, msg=k)
    assert (other / "history.jsonl").read_text().count("\n") == 4
    with pytest.raises(DetganError, match="is not empty; use --resume"):
        train_refiner(setup, *files, other, progress=False)


def test_refined_file_keeps_every_label_and_dataset(files, run, tmp_path):
    sim = files[0]
    out = refine_file(run, sim, tmp_path / "refined.h5", chunk_size=15)
    before, after = read_arrays(sim), read_arrays(out)
    assert set(after) == set(before)
    for name in ("energy", "log10_energy", "xmax", "core", "axis"):
        np.testing.assert_array_equal(after[name], before[name])
    assert after["traces"].shape == before["traces"].shape and (after["traces"] >= 0).all()
    s = after["traces"].astype(np.float64).sum(-1)
    np.testing.assert_array_equal(after["triggered"], s > 0)
    np.testing.assert_allclose(after["footprint"], np.where(s > 0, np.log10(s + 1), 0), rtol=1e-5)
    gate = load_refiner(run).threshold
    assert ((s == 0) | (s >= gate * (1 - 1e-5))).all()  # the trigger gate of the data variant
    attrs = read_attrs(out)
    assert attrs["refined"] == 1 and attrs["variant"] == "sim" and attrs["refiner_step"] == 4
    assert attrs["trigger_threshold"] == pytest.approx(read_attrs(files[1])["trigger_threshold"])
    with pytest.raises(DetganError, match="already exists; pass --overwrite"):
        refine_file(run, sim, out)


def test_refine_arrays_keeps_float16_finite(run):
    model = load_refiner(run)
    arrays = {"traces": np.full((2, 9, 9, 80), 6e4, np.float16), "energy": np.array([1.0, 2.0])}
    out = refine_arrays(model, arrays)
    assert out["traces"].dtype == np.float16 and np.isfinite(out["traces"]).all()
    assert out["energy"] is arrays["energy"]


def test_energy_performance_known_values():
    e_true = np.array([5.0, 5.0, 15.0, 15.0, 15.0])
    e_rec = np.array([5.5, 6.5, 15.0, 12.0, 18.0])  # r = 0.1, 0.3 | 0, -0.2, 0.2
    p = energy_performance(e_true, e_rec, [1, 10, 20])
    b0, b1 = p["bins"]
    assert (
        b0["n"] == 2
        and b0["bias"] == pytest.approx(0.2)
        and b0["resolution"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    )
    assert b1["bias"] == pytest.approx(0.0) and b1["resolution"] == pytest.approx(0.2)
    assert p["mean_abs_bias"] == pytest.approx(0.1)
    assert p["mean_resolution"] == pytest.approx((np.std([0.1, 0.3], ddof=1) + 0.2) / 2)


def test_one_feature_auc_and_timing_diagnostics_see_a_known_shift():
    """A rise time 30 ns slower in one log10 S bin only: that bin's AUC is 1, the others 0.5;
    identical features give 0.5; NaN values are left out; an empty side gives NaN."""
    rng = np.random.default_rng(0)
    n = 4000
    log_s = rng.uniform(2.0, 7.5, n)
    rise = rng.uniform(100.0, 110.0, n)
    data = {"log10_integral": log_s, "rise_time": rise, "fall_time": rise + 100}
    slow = np.where((log_s >= 3) & (log_s < 4), rise + 30.0, rise)
    feats = {"data": data, "sim": dict(data), "refined": {**data, "rise_time": slow}}
    diag = classifier_diagnostics(feats)
    assert diag["feature_auc"]["fall_time"] == {"sim": 0.5, "refined": 0.5}
    assert 0.55 < diag["feature_auc"]["rise_time"]["refined"] < 0.7  # diluted by the other bins
    rows = {tuple(r["log10_s"]): r for r in diag["hottest_timing"]}
    assert rows[(3.0, 4.0)]["refined"]["rise_auc"] == 1.0
    assert rows[(3.0, 4.0)]["refined"]["rise_median"] == pytest.approx(
        rows[(3.0, 4.0)]["data"]["rise_median"] + 30.0
    )
    assert all(r["sim"]["rise_auc"] == 0.5 for r in diag["hottest_timing"])
    assert rows[(5.0, 6.0)]["refined"]["rise_auc"] == 0.5
    assert one_feature_auc(np.array([1.0, np.nan, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert np.isnan(one_feature_auc(np.array([np.nan]), np.array([1.0])))


def test_auc_without_each_finds_a_feature_wrong_only_in_combination():
    """y follows x in 'data' but −x in the candidate: each marginal is the same (one-feature
    AUCs 0.5), the classifier separates them, and only leaving out x or y takes that away."""
    rng = np.random.default_rng(1)
    n = 2000
    x, x2, z = rng.normal(size=n), rng.normal(size=n), rng.normal(size=(2, n))
    data = {"x": x, "y": x + 0.1 * rng.normal(size=n), "z": z[0]}
    cand = {"x": x2, "y": -x2 + 0.1 * rng.normal(size=n), "z": z[1]}
    assert max(one_feature_auc(data[k], cand[k]) for k in data) < 0.56
    cfg = STUDY_PRESETS["quick"].replace(classifier_runs=1)
    without = auc_without_each(data, cand, cfg)
    assert set(without) == {"x", "y", "z"}
    assert without["z"] > 0.9 and without["x"] < 0.6 and without["y"] < 0.6


def test_miniature_study_writes_the_report(files, run, tmp_path):
    cfg = STUDY_PRESETS["quick"].replace(
        max_train=50,
        max_test=50,
        epochs=1,
        width=4,
        classifier_runs=2,
        energy_edges=[1.0, 50.0, 100.0],
    )
    # 40 events leave 30 to train and 10 held out; max_* only cap
    with pytest.raises(DetganError):
        cfg.replace(max_train=10)
    out = run_refine_study(*files, run, tmp_path / "report", config=cfg, log=lambda _m: None)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["performance"]) == {
        "sim_on_data",
        "refined_on_data",
        "data_on_data",
        "sim_on_sim",
    }
    assert summary["inputs"]["ranges"] == {
        "train": [0, 30],
        "sim_test": [30, 40],
        "data_test": [30, 40],
    }
    assert 0 <= summary["auc"]["sim_vs_data"]["auc"] <= 1
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "bias_resolution.png",
        "critic_loss.png",
        "scatter.png",
        "traces.png",
    ]
    report = (out / "report.md").read_text()
    assert "mean |bias|" in report and "Hottest station by log10(S / VEM)" in report
    diag = summary["classifier_diagnostics"]
    assert set(diag["feature_auc"]["rise_time"]) == {"sim", "refined"}
    assert len(diag["hottest_timing"]) == len(TIMING_EDGES) - 1
    assert set(diag["refined_auc_without"]) == set(diag["feature_auc"])
    assert "with that feature left out" in report
    with h5py.File(files[0]) as f:  # inputs untouched
        assert "refined" not in f.attrs
