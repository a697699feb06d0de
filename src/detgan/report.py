"""Evaluation reports: a self-contained HTML page, a Markdown summary and the JSON of §3.9.

:func:`write_report` takes an :class:`~detgan.evaluate.Evaluation` and writes into a new folder
``report.html`` (figures embedded as PNG, no external files, no LaTeX), ``summary.md`` and
``summary.json``; for CaloChallenge inputs also the CaloChallenge-style text files. Figures are
drawn by :mod:`detgan.plots` from the arrays the evaluation kept; no metric is computed here.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from detgan import plots
from detgan.utils import DetganError

__all__ = [
    "atomic_report_dir",
    "write_report",
    "headline_rows",
    "feature_rows",
    "build_figures",
    "to_json",
    "render_html",
    "render_markdown",
]


# ----------------------------------------------------------------------------- numbers


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int | np.integer):
        return str(int(v))
    v = float(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def _pm(v: Any, e: Any) -> str:
    return (
        _fmt(v)
        if e is None or (isinstance(e, float) and not math.isfinite(e))
        else f"{_fmt(v)} ± {_fmt(e, 2)}"
    )


def _clf(m: dict[str, Any], key: str, what: str) -> str:
    """'0.5012 ± 0.0031 (3 runs, n=20000/class)': fixed decimals, as AUC/JSD are quoted."""
    c = m.get(key)
    if not c:
        return "–"
    v, e = c[what], c[what + "_std"]
    text = "–" if v is None else f"{v:.4f}"
    if e is not None and math.isfinite(e):
        text += f" ± {e:.4f}"
    return f"{text} ({len(c['runs'])} runs, n={c['n_per_class']}/class)"


def headline_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, candidate vs reference, floor) rows for one family's result."""
    m, f = result["metrics"], result.get("floor", {})
    rows = []
    for key, name in (("classifier_low", "low-level"), ("classifier_high", "high-level")):
        if key in m:
            rows.append((f"classifier AUC, {name}", _clf(m, key, "auc"), _clf(f, key, "auc")))
            rows.append((f"classifier JSD, {name}", _clf(m, key, "jsd"), _clf(f, key, "jsd")))
    for key in ("fpd", "kpd"):
        if key in m:
            rows.append((f"{key.upper()} ×10³", _x1e3(m, key), _x1e3(f, key)))
    if "prdc" in m:
        rows.append(("precision / recall / density / coverage", _prdc(m), _prdc(f)))
    if "memorisation" in m:
        rows.append(
            (
                "memorisation: median d_T ratio / fraction < 1 % / copies",
                _memo(m["memorisation"]),
                _memo(f.get("memorisation")),
            )
        )
    get = lambda d, a, b: _fmt(d.get(a, {}).get(b)) if d else "–"  # noqa: E731
    rows.append(
        ("correlation-matrix MSE", get(m, "correlation", "mse"), get(f, "correlation", "mse"))
    )
    rows.append(
        (
            "per-cell mean |Δ log(1+var)|",
            get(m, "cells", "log1p_var_diff_mean"),
            get(f, "cells", "log1p_var_diff_mean"),
        )
    )
    rows.append(("per-cell variance ratio, median [5 %, 95 %]", _ratio(m), _ratio(f)))
    for group in ("features", "pooled"):
        if group in m:
            rows.append(
                (
                    f"mean separation power ({group})",
                    _fmt(_mean_sep(m[group])),
                    _fmt(_mean_sep(f.get(group, {}))),
                )
            )
    if "condition_ks" in m:
        rows.append(
            (
                "condition KS statistic (p-value)",
                f"{m['condition_ks']['statistic']:.4f} (p = {_fmt(m['condition_ks']['pvalue'])})",
                _fmt(f.get("condition_ks", {}).get("statistic")),
            )
        )
    return rows


def _memo(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    return f"{_fmt(d['median_ratio'])} / {_fmt(d['fraction_below_p01'])} / {d['n_copies']}"


def _x1e3(d: dict[str, Any], key: str) -> str:
    return _pm(d[key]["value_x1e3"], d[key]["error_x1e3"]) if key in d else "–"


def _prdc(d: dict[str, Any]) -> str:
    if "prdc" not in d:
        return "–"
    return " / ".join(_fmt(d["prdc"][k]) for k in ("precision", "recall", "density", "coverage"))


def _ratio(d: dict[str, Any]) -> str:
    c = d.get("cells") if d else None
    if not c:
        return "–"
    lo, hi = _fmt(c["var_ratio_p05"]), _fmt(c["var_ratio_p95"])
    return f"{_fmt(c['var_ratio_median'])} [{lo}, {hi}]"


def _mean_sep(group: dict[str, Any]) -> float:
    vals = [
        v["separation"]
        for v in group.values()
        if "separation" in v and v["separation"] is not None and math.isfinite(v["separation"])
    ]
    return float(np.mean(vals)) if vals else float("nan")


#: at most this many per-observable histograms per family (CaloChallenge dataset 2 has 400
#: observables); the ones furthest above their floor are drawn, every number is in the tables
MAX_HISTOGRAMS = 36


def _most_distant(names: list[str], m: dict[str, Any], floor: dict[str, Any]) -> set[str]:
    """The MAX_HISTOGRAMS observables with the largest separation power / floor."""
    if len(names) <= MAX_HISTOGRAMS:
        return set(names)
    ratio = lambda n: m[n]["separation"] / max(floor.get(n, {}).get("separation") or 0, 1e-7)  # noqa: E731
    return set(sorted(names, key=ratio, reverse=True)[:MAX_HISTOGRAMS])


def _redundant(name: str, names: Any) -> bool:
    """``occupancy_l`` duplicates ``sparsity_l`` (= 1 − occupancy): kept in the JSON only."""
    return name.startswith("occupancy_") and f"sparsity_{name[10:]}" in names


def feature_rows(result: dict[str, Any], group: str = "features") -> list[tuple[str, ...]]:
    """(label, reference mean ± std, candidate mean ± std, W₁ ± err, floor W₁, separation,
    floor sep., KS, floor KS, out of range, key)."""
    m, f = result["metrics"].get(group, {}), result.get("floor", {}).get(group, {})
    labels = result.get("labels", {})
    rows = []
    for name, d in m.items():
        if _redundant(name, m):
            continue
        fl = f.get(name, {})
        label = labels.get(name, name)
        if "wasserstein" not in d:
            rows.append((label, "–", "–", d.get("note", "–"), *["–"] * 6, name))
            continue
        out = d["separation_underflow_candidate"] + d["separation_overflow_candidate"]
        rows.append(
            (
                label,
                _pm(d.get("mean_reference"), d.get("std_reference")),
                _pm(d.get("mean_candidate"), d.get("std_candidate")),
                _pm(d["wasserstein"], d["wasserstein_error"]),
                _fmt(fl.get("wasserstein")),
                _fmt(d["separation"]),
                _fmt(fl.get("separation")),
                _fmt(d["ks"]),
                _fmt(fl.get("ks")),
                f"{100 * out:.2g} %",
                name,
            )
        )
    return rows


FEATURE_HEADER = (
    "observable / unit",
    "reference mean ± std",
    "candidate mean ± std",
    "W₁ ± bootstrap (unit of the observable)",
    "floor W₁",
    "separation",
    "floor sep.",
    "KS",
    "floor KS",
    "cand. out of range",
    "JSON key",
)


# ----------------------------------------------------------------------------- figures


def build_figures(evaluation: Any) -> dict[str, list[tuple[str, Any]]]:
    """Per family a list of (caption, Figure) drawn from the evaluation's arrays."""
    from detgan.metrics import correlation_matrix

    out: dict[str, list[tuple[str, Any]]] = {}
    for family, (ref, cand) in evaluation.samples.items():
        result = evaluation.summary["families"][family]
        figs: list[tuple[str, Any]] = []
        feats = result["metrics"].get("features", {})
        names = [
            n
            for n, d in feats.items()
            if "separation" in d
            and d["separation"] is not None
            and math.isfinite(d["separation"])
            and not _redundant(n, feats)
        ]
        shown = _most_distant(names, feats, result.get("floor", {}).get("features", {}))
        if names:
            floor = result.get("floor", {}).get("features", {})
            some = [n for n in names if n in shown]
            what = "" if len(some) == len(names) else f" ({len(some)} of {len(names)} shown)"
            figs.append(
                (
                    "Separation power per observable, with the reference-vs-reference floor" + what,
                    plots.distance_overview(
                        [ref.labels.get(n, n) for n in some],
                        [max(feats[n]["separation"], 1e-7) for n in some],
                        [max(floor.get(n, {}).get("separation", np.nan), 1e-7) for n in some],
                    ),
                )
            )
        undefined_only = [n for n in ref.features if n not in feats or n not in names]
        for name in (k for k in ref.features if k in shown or k in undefined_only):
            if _redundant(name, ref.features):
                continue
            label = ref.labels.get(name, name)
            figs.append(
                (
                    _caption(label, name, result),
                    plots.histogram_ratio(
                        ref.features[name],
                        cand.features[name],
                        ref.bins.get(name, 40),
                        xlabel=label,
                        title=name,
                    ),
                )
            )
        for name in (k for k in ref.pooled if not k.startswith("_") and k in cand.pooled):
            label = ref.labels.get(name, name)
            if family == "traces":
                label = f"{label} (all stations)".replace(", hottest station", "")
            figs.append(
                (
                    _caption(label, name, result, "pooled"),
                    plots.histogram_ratio(
                        ref.pooled[name],
                        cand.pooled[name],
                        ref.bins.get(name, 40),
                        xlabel=label,
                        title=f"{name}, every station" if family == "traces" else name,
                    ),
                )
            )
        figs += _family_figures(family, ref, cand, result)
        layers = [k.rpartition("_")[2] for k in ref.features if k.startswith("e_layer_")]
        what = "layer energies" if family == "calochallenge" else "cells"
        figs.append(
            (
                f"Correlation matrices of the {what}",
                plots.matrix_comparison(
                    correlation_matrix(ref.corr),
                    correlation_matrix(cand.corr),
                    title=f"{family}: correlations of the {what}",
                    labels=layers if family == "calochallenge" else None,
                ),
            )
        )
        curves = {
            f"{k.split('_')[1]}-level inputs": result["metrics"][k]["runs"]
            for k in ("classifier_low", "classifier_high")
            if k in result["metrics"]
        }
        if curves:
            figs.append(
                (
                    "Classifier calibration (validation split)",
                    plots.calibration_curves(
                        {k: [r["calibration"] for r in v] for k, v in curves.items()},
                        title="calibrated classifier",
                    ),
                )
            )
        out[family] = figs
    return out


def _caption(label: str, name: str, result: dict[str, Any], group: str = "features") -> str:
    """Figure caption: the observable and its separation power next to the floor."""
    m = result["metrics"].get(group, {}).get(name, {})
    if "separation" not in m:
        return label
    fl = result.get("floor", {}).get(group, {}).get(name, {})
    return f"{label}: separation {_fmt(m['separation'])} (floor {_fmt(fl.get('separation'))})"


def _layer_axis(features: dict[str, Any]) -> str:
    ids = [k.rpartition("_")[2] for k in features if k.startswith("e_layer_")]
    return f"relevant layer (ids {', '.join(ids)})" if ids else "layer"


def _family_figures(
    family: str, ref: Any, cand: Any, result: dict[str, Any]
) -> list[tuple[str, Any]]:
    figs = []
    for name, img in ref.images.items():
        other = cand.images.get(name)
        if other is None:
            continue
        if img.ndim == 1 and "trace" in name:
            x = (np.arange(len(img)) + 0.5) * 25.0
            figs.append(
                (
                    name,
                    plots.profile_comparison(
                        x,
                        img,
                        other,
                        xlabel="time / ns",
                        ylabel="signal / VEM per bin",
                        title=name,
                        logy=True,
                    ),
                )
            )
        elif img.ndim == 1 and "occupancy_rel" in name:
            from detgan.observables_lhcb import LHCB_ALPHAS

            figs.append(
                (
                    "mean fraction of cells above α·E_tot (LHCb 'sparsity')",
                    plots.profile_comparison(
                        np.log10(LHCB_ALPHAS),
                        img,
                        other,
                        xlabel="log10 α (relative threshold)",
                        ylabel="mean fraction of cells",
                        title=name,
                        logy=True,
                    ),
                )
            )
        elif img.ndim == 1:
            figs.append(
                (
                    name,
                    plots.profile_comparison(
                        np.arange(len(img)),
                        img,
                        other,
                        xlabel=_layer_axis(ref.features),
                        ylabel="mean energy / MeV",
                        title=name,
                        logy=True,
                    ),
                )
            )
        elif img.ndim == 2:
            figs.append(
                (
                    name,
                    plots.image_comparison(img, other, title=name, xlabel="j (y)", ylabel="i (x)"),
                )
            )
    if family == "footprint":
        keys = ["hottest_signal"] + [k for k in ref.features if k.startswith("ring_")]
        mean = lambda d: np.array([np.nanmean(d.features[k]) for k in keys])  # noqa: E731
        err = lambda d: np.array([np.nanstd(d.features[k]) / math.sqrt(len(d)) for k in keys])  # noqa: E731
        figs.append(
            (
                "Lateral profile around the hottest station",
                plots.profile_comparison(
                    np.arange(len(keys)),
                    mean(ref),
                    mean(cand),
                    reference_error=err(ref),
                    candidate_error=err(cand),
                    xlabel="distance from hottest station / spacing",
                    ylabel="mean log10(S+1)",
                    title="lateral profile",
                ),
            )
        )
    return figs


# ----------------------------------------------------------------------------- writers


def to_json(obj: Any) -> Any:
    """Make a summary JSON-safe: numpy → Python, NaN/inf → null."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _table_md(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table; a '|' inside a cell (E_tot / |p|) is escaped so it stays one cell."""

    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row(header), "|" + "---|" * len(header), *map(row, rows)])


def render_markdown(summary: dict[str, Any]) -> str:
    """The Markdown summary: inputs, settings, per family headline and feature tables, warnings."""
    inp, s = summary["inputs"], summary["settings"]
    cs = s["classifier_settings"]
    parts = [
        "# detgan evaluation",
        "",
        f"- reference: `{inp['reference']}` ({_sizes(inp['n_reference'])} events)",
        f"- candidate: `{inp['candidate']}` ({_sizes(inp['n_candidate'])} events)",
        f"- kind: {inp['kind']}; protocol: {s['protocol']}; seed: {s['seed']}",
        f"- classifier: {_net(cs)}, {cs['n_runs']} runs, lr {cs['learning_rate']}; "
        "mean ± std (ddof 1) over runs",
        "- floor: the reference split into two random halves, evaluated with the same pipeline",
        f"- elapsed: {summary.get('elapsed_s', '–')} s on "
        f"{summary['environment']['threads']} thread(s)",
        f"- legacy switches (§A): {_legacy(s)}",
        "",
    ]
    for family, result in summary["families"].items():
        parts += [
            f"## {family}",
            "",
            _table_md(
                ("metric", "candidate vs reference", "floor (ref. halves)"), headline_rows(result)
            ),
            "",
        ]
        for group in ("features", "pooled"):
            if group in result["metrics"]:
                title = (
                    "Observables"
                    if group == "features"
                    else "Pooled observables (every station / voxel)"
                )
                parts += [
                    f"### {title}",
                    "",
                    _table_md(FEATURE_HEADER, feature_rows(result, group)),
                    "",
                ]
    if summary.get("warnings"):
        parts += ["## Warnings", ""] + [f"- {w}" for w in summary["warnings"]] + [""]
    return "\n".join(parts)


def _net(cs: dict[str, Any]) -> str:
    """'2 × 128 units (fewer for wide inputs), up to 15 epochs (patience 5)'."""
    narrow = " (fewer for wide inputs)" if cs.get("max_input_weights") else ""
    stop = f" (patience {cs['patience']})" if cs.get("patience") else ""
    return f"{cs['n_layers']} × {cs['hidden']} units{narrow}, up to {cs['epochs']} epochs{stop}"


def _legacy(settings: dict[str, Any]) -> str:
    return ", ".join(settings.get("legacy") or ()) or "none (project conventions)"


def _sizes(n: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in n.items())


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:22px} header p{margin:2px 0;font-size:13px;opacity:.9}
main{padding:8px 32px 40px 32px;max-width:1400px}
h2{border-bottom:2px solid #1f3a5f;padding-bottom:4px;margin-top:32px}
h3{margin-top:22px;color:#1f3a5f}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px 0;background:#fff}
th,td{border:1px solid #ddd;padding:4px 9px;text-align:right}
th{background:#eef2f7} td:first-child,th:first-child{text-align:left}
td.floor{color:#555;background:#f6f6f6}
.note{font-size:12px;color:#555;max-width:1000px}
.warn{background:#fff4e5;border-left:4px solid #e67e22;padding:6px 12px;font-size:13px;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;border:1px solid #e3e3e3;padding:4px;width:min-content}
figure img{display:block}
figcaption{font-size:11px;color:#444;padding:2px 4px}
"""


def _png(fig: Any, dpi: int = 72) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table_html(
    header: tuple[str, ...], rows: list[tuple[str, ...]], floor_cols: tuple[int, ...] = ()
) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=floor' if i in floor_cols else ''}>{esc(str(c))}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summary: dict[str, Any], figures: dict[str, list[tuple[str, Any]]]) -> str:
    """The self-contained HTML page: header, warnings, per family tables and embedded figures."""
    esc = html.escape
    inp, cs = summary["inputs"], summary["settings"]["classifier_settings"]
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>detgan evaluation</title>"
        f"<style>{_CSS}</style></head><body><header><h1>detgan evaluation report</h1>",
        f"<p>reference <b>{esc(inp['reference'])}</b> ({esc(_sizes(inp['n_reference']))}) · "
        f"candidate <b>{esc(inp['candidate'])}</b> ({esc(_sizes(inp['n_candidate']))})</p>",
        f"<p>kind {esc(inp['kind'])} · protocol {esc(summary['settings']['protocol'])} · seed "
        f"{summary['settings']['seed']} · detgan {esc(summary['environment']['detgan'])} · "
        f"{summary.get('elapsed_s', '–')} s on {summary['environment']['threads']} thread(s) · "
        f"legacy switches: {esc(_legacy(summary['settings']))}</p></header><main>",
        "<p class=note>Every number is shown next to its <b>floor</b>: the same metric between "
        "two random halves of the reference (statistical limit; sizes differ from the main "
        "comparison). "
        f"Classifier: {esc(_net(cs))}, "
        f"{cs['n_runs']} independent runs (mean ± std, ddof 1), isotonic calibration on the test "
        "split, AUC and JSD (bits) on the validation split. FPD/KPD ×10³ on the high-level "
        "features. W₁ errors: bootstrap (100 resamplings).</p>",
    ]
    out += [f"<div class=warn>{esc(w)}</div>" for w in summary.get("warnings", [])]
    for family, result in summary["families"].items():
        out.append(f"<h2>{esc(family)}</h2>")
        out.append(
            _table_html(
                ("metric", "candidate vs reference", "floor (reference halves)"),
                headline_rows(result),
                (2,),
            )
        )
        for group in ("features", "pooled"):
            if group in result["metrics"]:
                title = (
                    "Observables"
                    if group == "features"
                    else "Pooled observables (every station with signal / every voxel)"
                )
                out.append(f"<h3>{title}</h3>")
                out.append(_table_html(FEATURE_HEADER, feature_rows(result, group), (4, 6, 8, 10)))
        out.append("<h3>Figures</h3><div class=grid>")
        for caption, fig in figures.get(family, []):
            wide = " class=wide" if fig.get_figwidth() > 6 else ""
            out.append(
                f"<figure{wide}><img src='data:image/png;base64,{_png(fig)}' alt='{esc(caption)}'>"
                f"<figcaption>{esc(caption)}</figcaption></figure>"
            )
        out.append("</div>")
    out.append("</main></body></html>")
    return "\n".join(out)


@contextlib.contextmanager
def atomic_report_dir(path: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder renamed onto ``path`` on success; an old report is replaced only
    with ``overwrite`` and only if it looks like a report (holds ``summary.json``) or is empty."""
    if path.exists():
        if not overwrite:
            raise DetganError(f"output '{path}' already exists; pass --overwrite to replace it")
        if not path.is_dir() or (any(path.iterdir()) and not (path / "summary.json").exists()):
            raise DetganError(
                f"output '{path}' exists and is not a detgan report; choose another folder"
            )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DetganError(
            f"directory '{parent}' of output '{path}' does not exist; create it first"
        )
    tmp = parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_report(
    evaluation: Any,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    figures: bool = True,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``report.html``, ``summary.md``, ``summary.json`` (and ``extra_files``) to a folder."""
    path = Path(output)
    summary = to_json(evaluation.summary)
    with atomic_report_dir(path, overwrite) as tmp:
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
        (tmp / "summary.md").write_text(render_markdown(summary))
        figs = build_figures(evaluation) if figures else {}
        (tmp / "report.html").write_text(render_html(summary, figs))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return path
