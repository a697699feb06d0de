"""Report: HTML with embedded figures, Markdown and strict JSON from an evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detgan import report
from detgan.evaluate import Evaluation, EvaluationSettings, evaluate_families, extract_airshower
from detgan.utils import DetganError


def _footprints(rng, n, scale=1.0):
    f = np.zeros((n, 9, 9))
    f[:, 4, 4] = rng.normal(5, 0.5, n) * scale
    f[:, 3:6, 3:6] += np.clip(rng.normal(2, 0.5, (n, 3, 3)), 0, None)
    return {"footprint": f, "energy": rng.uniform(1, 100, n)}


@pytest.fixture
def evaluation():
    rng = np.random.default_rng(1)
    ref = extract_airshower(_footprints(rng, 400), "footprint")
    cand = extract_airshower(_footprints(rng, 300, 1.05), "footprint")
    s = EvaluationSettings(classifier_runs=1, fpd=False, n_bootstrap=5)
    results, _, notes = evaluate_families({"footprint": ref}, {"footprint": cand}, s)
    summary = {
        "inputs": {
            "reference": "r.h5",
            "candidate": "c.h5",
            "kind": "footprint",
            "n_reference": {"footprint": 400},
            "n_candidate": {"footprint": 300},
        },
        "settings": {**s.to_dict(), "classifier_settings": s.classifier_settings().to_dict()},
        "environment": {"detgan": "test", "threads": 1},
        "families": results,
        "warnings": notes,
    }
    return Evaluation(summary, {"footprint": (ref, cand)})


def test_write_report(tmp_path, evaluation):
    out = report.write_report(evaluation, tmp_path / "rep")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") > 5 and "<script" not in html
    assert "floor" in html and "hottest_signal" in html
    md = (out / "summary.md").read_text()
    assert "| classifier AUC, low-level |" in md
    data = json.loads((out / "summary.json").read_text())  # strict JSON: NaN became null
    fam = data["families"]["footprint"]
    assert set(fam) == {"metrics", "floor", "labels"}
    main_w1 = fam["metrics"]["features"]["hottest_signal"]["wasserstein"]
    assert main_w1 > 2 * fam["floor"]["features"]["hottest_signal"]["wasserstein"]
    with pytest.raises(DetganError, match="already exists"):
        report.write_report(evaluation, out)
    report.write_report(evaluation, out, overwrite=True, figures=False)


def test_refuses_to_overwrite_foreign_folder(tmp_path, evaluation):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(DetganError, match="not a detgan report"):
        report.write_report(evaluation, tmp_path / "x", overwrite=True)


def test_to_json_and_format():
    assert report.to_json({"a": np.float32(1.5), "b": [np.nan, np.int64(2)]}) == {
        "a": 1.5,
        "b": [None, 2],
    }
    assert report._fmt(1.23456e-5) == "1.23e-05" and report._pm(0.5, 0.01) == "0.5 ± 0.01"


def test_histograms_limited_to_the_observables_furthest_above_their_floor():
    names = [f"f{i}" for i in range(50)]
    m = {n: {"separation": float(i)} for i, n in enumerate(names)}
    floor = {n: {"separation": 1.0} for n in names}
    shown = report._most_distant(names, m, floor)
    assert len(shown) == report.MAX_HISTOGRAMS and shown == set(names[-report.MAX_HISTOGRAMS :])
    assert report._redundant("occupancy_3", {"sparsity_3": 1}) and not report._redundant(
        "occupancy_3", {}
    )


def test_calorimeter_labels_carry_units():
    from detgan.observables_calo import calo_labels

    labels = calo_labels(["etot_einc", "e_layer_12", "width_phi_2", "etot_einc_at_4096"])
    assert labels == {
        "etot_einc": "E_tot / E_inc",
        "e_layer_12": "E layer 12 / MeV",
        "width_phi_2": "W_φ layer 2 / mm",
        "etot_einc_at_4096": "E_tot / E_inc at E_inc = 4096 MeV",
    }
    assert calo_labels(["width_phi_middle"], "atlas") == {"width_phi_middle": "w_φ middle / rad"}


def test_markdown_tables_escape_bars_inside_cells():
    """Labels such as 'E_tot / |p|' or 'mean |Δ log(1+var)|' stay in one cell."""
    import re

    text = report._table_md(("observable", "value"), [("E_tot / |p|", "0.99"), ("x", "|1|")])
    for line in text.splitlines():
        assert len(re.findall(r"(?<!\\)\|", line)) == 3, line
    assert "E_tot / \\|p\\|" in text
