"""The refinement study's report: figures from the study's arrays, the Markdown page, the folder.

Figures are drawn by :mod:`detgan.plots` from arrays prepared here (paper Figs. 5–7 of
arXiv:1802.03325); the folder holds ``summary.json``, ``report.md``, ``report.html`` (figures
embedded) and ``figures/*.png`` and appears only when complete.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from detgan import plots

__all__ = ["study_figures", "render_study_markdown", "write_study_report"]

_LABELS = {
    "sim_on_data": "trained on sim",
    "refined_on_data": "trained on refined sim",
    "data_on_data": "trained on data",
    "sim_on_sim": "sim on sim (benchmark)",
}
_COLOURS = {
    "sim_on_data": "#c0392b",
    "refined_on_data": "#2471a3",
    "data_on_data": "0.3",
    "sim_on_sim": "#7d9c3a",
    "sim": "#c0392b",
    "refined": "#2471a3",
    "data": "0.3",
}


def _bias_figure(perf: dict[str, Any]):
    """Paper Fig. 6 from the per-bin performance of every regressor."""
    bins = next(iter(perf.values()))["bins"]
    centre = np.array([(b["low"] + b["high"]) / 2 for b in bins])
    quantities = ("bias", "bias_err", "resolution", "resolution_err")
    curves = {
        k: {q: np.array([b[q] for b in p["bins"]]) for q in quantities} for k, p in perf.items()
    }
    styles = {
        k: {"color": _COLOURS[k], "label": _LABELS[k], "ls": "--" if k == "sim_on_sim" else "-"}
        for k in perf
    }
    return plots.energy_bias_resolution(centre, curves, styles=styles)


def _matched_event(vem: dict[str, np.ndarray]) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """A held-out event near the median energy range: its index, hottest station (from data)
    and the brightest of its direct neighbours."""
    signal = vem["data"].sum(-1)
    total = signal.sum((1, 2))
    idx = int(np.argsort(total)[len(total) // 2])
    i, j = np.unravel_index(int(signal[idx].argmax()), signal[idx].shape)
    cand = [
        (i + di, j + dj)
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, 1), (1, -1))
        if 0 <= i + di < signal.shape[1] and 0 <= j + dj < signal.shape[2]
    ]
    nb = max(cand, key=lambda c: signal[idx][c])
    return idx, (int(i), int(j)), (int(nb[0]), int(nb[1]))


def _traces_figure(vem: dict[str, np.ndarray], matched: bool):
    """Paper Fig. 5: data, sim and refined traces of one matched event's hottest station and
    a neighbour."""
    idx, hot, nb = _matched_event(vem)
    note = "" if matched else " — events not matched"
    panels = {
        f"{what} ({i}, {j}){note}": {k: vem[k][idx, i, j] for k in ("data", "sim", "refined")}
        for (i, j), what in zip((hot, nb), ("hottest station", "neighbour"))
    }
    styles = {k: {"color": _COLOURS[k], "lw": 1.2 if k != "data" else 1.8} for k in vem}
    return plots.trace_comparison(panels, styles=styles)


def study_figures(
    perf: dict[str, Any],
    preds: dict[str, np.ndarray],
    truths: dict[str, np.ndarray],
    vem: dict[str, np.ndarray],
    matched: bool,
    history: dict[str, list[float]],
) -> dict[str, tuple[Any, str]]:
    """The report's figures, name → (Figure, caption): Fig. 6 from ``perf`` (per-bin results
    per regressor), E_rec (``preds``) against E_true (``truths``), Fig. 5 from the held-out
    traces in VEM ``vem`` and Fig. 7 from the refiner's ``history`` (step, C1, C2)."""
    pairs = {_LABELS[k]: (truths[k], p) for k, p in preds.items()}
    colours = {_LABELS[k]: _COLOURS[k] for k in preds}
    critic_loss = -np.asarray(history["C1"]) + np.asarray(history["C2"])
    return {
        "bias_resolution": (_bias_figure(perf), "Bias and resolution per energy bin (Fig. 6)"),
        "scatter": (
            plots.energy_scatter(pairs, colours=colours),
            "Reconstructed against true energy",
        ),
        "traces": (
            _traces_figure(vem, matched),
            "Fig. 5: one matched event, data / sim / refined traces",
        ),
        "critic_loss": (
            plots.loss_curve(
                history["step"],
                critic_loss,
                label="−C1 + C2",
                xlabel="refiner iteration",
                ylabel="critic loss",
            ),
            "Fig. 7: critic loss during refiner training",
        ),
    }


# ------------------------------------------------------------------------------------ the page
def _rows(summary: dict[str, Any]) -> list[list[str]]:
    """The per-bin table: header, one row per energy bin, the mean over bins."""
    perf = summary["performance"]
    keys = list(perf)
    rows = []
    for bins in zip(*(perf[k]["bins"] for k in keys)):
        cells = [f"{bins[0]['low']:g}–{bins[0]['high']:g}", str(bins[0]["n"])]
        cells += [f"{x['bias']:+.3f} / {x['resolution']:.3f}" for x in bins]
        rows.append(cells)
    rows.append(
        [
            "mean over bins",
            "",
            *[
                f"{abs(perf[k]['mean_abs_bias']):.3f} / {perf[k]['mean_resolution']:.3f}"
                for k in keys
            ],
        ]
    )
    return [["E / EeV", "n (data)", *[_LABELS[k] for k in keys]]] + rows


def render_study_markdown(summary: dict[str, Any]) -> str:
    """The study page in Markdown: headline numbers and the per-bin table."""
    a, h, inp = summary["auc"], summary["hottest_station_ratio_to_data"], summary["inputs"]
    bias = {k: v["mean_abs_bias"] for k, v in summary["performance"].items()}
    auc = {k: f"{v['auc']:.3f} ± {v['auc_std']:.3f}" for k, v in a.items()}
    ratio = {k: f"{v['median']:.2f} [{v['q16']:.2f}, {v['q84']:.2f}]" for k, v in h.items()}
    table = _rows(summary)
    lines = [
        "# Refinement study: energy reconstruction on held-out 'data'",
        "",
        f"Refiner run `{inp['refiner_run']}` (step {inp['refiner_step']}); "
        f"sim `{inp['sim']}`, data `{inp['data']}`.",
        "",
        f"- mean |bias| over bins: sim-trained {bias['sim_on_data']:.3f}, refined-trained "
        f"{bias['refined_on_data']:.3f}, data-trained {bias['data_on_data']:.3f} "
        f"(reduction by refining: {100 * summary['bias_reduction']:.0f} %)",
        f"- mean resolution ratio refined/sim-trained: {summary['resolution_ratio']:.2f}",
        f"- classifier AUC sim vs data {auc['sim_vs_data']}, refined vs data "
        f"{auc['refined_vs_data']}",
        f"- hottest station / data (matched events, median [16 %, 84 %]): sim {ratio['sim']}, "
        f"refined {ratio['refined']}",
        "- stations with signal per event: "
        + ", ".join(f"{k} {v:.1f}" for k, v in summary["multiplicity"].items()),
        f"- times (s): {summary['timings']}",
        "",
        "Bias / resolution of (E_rec − E_true)/E_true per bin of E_true:",
        "",
    ]
    lines += _table_lines(table)
    if "classifier_diagnostics" in summary:
        lines += _diagnostic_lines(summary["classifier_diagnostics"])
    return "\n".join(lines) + "\n"


def _table_lines(table: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(table[0]) + " |",
        "|" + "---|" * len(table[0]),
        *("| " + " | ".join(r) + " |" for r in table[1:]),
    ]


def _diagnostic_lines(diag: dict[str, Any]) -> list[str]:
    """What the classifier sees: one-feature AUCs and the hottest station's timing by log10 S."""
    lines = [
        "",
        "What the classifier can see — each feature alone, max(AUC, 1 − AUC) against 'data' "
        "(0.5: indistinguishable):",
        "",
    ]
    auc, without = diag["feature_auc"], diag.get("refined_auc_without", {})
    head = ["feature", "sim", "refined"] + (
        ["refined vs data, all others (classifier AUC)"] if without else []
    )
    lines += _table_lines(
        [head]
        + [
            [k, f"{v['sim']:.3f}", f"{v['refined']:.3f}"]
            + ([f"{without[k]:.3f}"] if without else [])
            for k, v in auc.items()
        ]
    )
    if without:
        lines += [
            "",
            "(last column: the classifier's AUC with that feature left out; a large drop from "
            "the full AUC marks what it relies on, alone or in combination)",
        ]
    lines += [
        "",
        "Hottest station by log10(S / VEM): events, median rise / fall time (ns), and the rise "
        "time's one-feature AUC against 'data' in the bin:",
        "",
    ]
    rows = [["log10 S", "data", "sim", "refined"]]
    for r in diag["hottest_timing"]:
        cells = [f"{r['log10_s'][0]:g}–{r['log10_s'][1]:g}"]
        for k in ("data", "sim", "refined"):
            v = r[k]
            cell = f"{v['n']}: {v['rise_median']:.0f} / {v['fall_median']:.0f}"
            cells.append(cell + (f" (AUC {v['rise_auc']:.2f})" if "rise_auc" in v else ""))
        rows.append(cells)
    return lines + _table_lines(rows)


def write_study_report(
    out: str | os.PathLike,
    summary: dict[str, Any],
    figures: dict[str, tuple[Any, str]],
    overwrite: bool = False,
) -> Path:
    """Write the report folder atomically (temporary folder, then rename): ``summary.json``,
    ``report.md``, ``report.html`` and ``figures/NAME.png``. An existing folder is replaced only
    with ``overwrite`` and only if it is empty or holds a ``summary.json``."""
    from detgan.report import atomic_report_dir

    out = Path(out)
    with atomic_report_dir(out, overwrite) as tmp:
        (tmp / "figures").mkdir()
        _fill(tmp, summary, figures)
    return out


def _fill(folder: Path, summary: dict[str, Any], figures: dict[str, tuple[Any, str]]) -> None:
    """The report's files in ``folder`` (which holds an empty ``figures/``)."""
    from detgan.report import to_json

    md = render_study_markdown(summary)
    (folder / "summary.json").write_text(json.dumps(to_json(summary), indent=1))
    (folder / "report.md").write_text(md)
    parts = []
    for name, (fig, caption) in figures.items():
        fig.savefig(folder / "figures" / f"{name}.png", dpi=90)
        data = base64.b64encode((folder / "figures" / f"{name}.png").read_bytes()).decode()
        parts.append(
            f"<figure><img src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    (folder / "report.html").write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>detgan refinement study"
        "</title></head><body style='font-family:sans-serif;max-width:1100px'>"
        f"<pre>{html.escape(md)}</pre>{''.join(parts)}</body></html>"
    )
