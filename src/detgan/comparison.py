"""Comparison of two samples of one data family: settings, per-family data and every distance.

:class:`EvaluationSettings` (every field goes into the JSON summary), :class:`FamilyData`
(per-event observables, classifier inputs, cells, condition, mean images of one sample) and
:func:`compare`, which computes every distance of ``formats_and_metrics.md`` §3 between two
:class:`FamilyData` objects. :mod:`detgan.evaluate` adds floors, files and caching and
re-exports these names.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from detgan import metrics, observables
from detgan.config import Config, require

__all__ = [
    "AIRSHOWER_KINDS",
    "LEGACY_SWITCHES",
    "EvaluationSettings",
    "FamilyData",
    "compare",
    "split_halves",
    "nn_representation",
    "memorisation_with_floor",
]

AIRSHOWER_KINDS = ("footprint", "traces")

#: Legacy switches (``formats_and_metrics.md`` §A): name → what it reproduces. Defaults follow
#: the spec; a switch only reproduces a published number and is named in every output.
LEGACY_SWITCHES = {
    "lhcb-2019": "A.3: LHCb asymmetries/widths of the 2019 challenge code (2nd axis = x, no pitch)",
    "klein-width": "A.4: ATLAS widths as variances, Back layer divided by E_Middle²",
    "cc-histograms": "A.9: histogram_chi2 text file without sparsity, EC_r and W_r",
    "cc-classifier": "A.10: one classifier run, unseeded, equal sample sizes required",
    "float64": "A.11: classifier trained in float64",
    "cc-correlation": "A.12: layer-energy correlation matrices stored with rows reversed",
    "prdc-one-line": "A.13: PRDC text file with the four values on one line",
}


@dataclasses.dataclass(frozen=True)
class EvaluationSettings(Config):
    """Settings of one evaluation; every field is written to the JSON summary.

    ``classifier_preset`` 'fast' trains 3 small nets (2 × 128 units, 15 epochs; 2 × 32 units
    for inputs wider than 2048) per input and sample pair, FPD averages 10 draws per batch size
    and KPD uses batches of 5 000; ``protocol='calochallenge'`` selects the published settings
    (3 × 2048 units, 50 epochs, 10 runs; 20 FPD draws; KPD batches of 10 000). CaloChallenge
    files use the published classifier inputs (cls-low, cls-high) under both protocols.
    """

    kind: str = "auto"
    protocol: str = "detgan"
    classifier: bool = True
    classifier_preset: str = "fast"
    classifier_runs: int = 0
    n_bootstrap: int = 100
    fpd: bool = True
    kpd_batch_size: int = 0
    fpd_bootstrap: int = 0
    prdc: bool = False
    max_events: int = 0
    trace_rebin: int = 5
    seed: int = 0
    device: str = "cpu"
    legacy: tuple[str, ...] = ()

    def validate(self) -> None:
        require(
            self.protocol in ("detgan", "calochallenge"),
            f"unknown protocol '{self.protocol}'; use detgan or calochallenge",
        )
        require(
            self.classifier_preset in metrics.CLASSIFIER_PRESETS,
            f"unknown classifier preset '{self.classifier_preset}'; use "
            + ", ".join(metrics.CLASSIFIER_PRESETS),
        )
        require(self.classifier_runs >= 0, "classifier_runs must be >= 0 (0: preset default)")
        require(self.n_bootstrap >= 2, "n_bootstrap must be at least 2")
        require(
            self.kpd_batch_size == 0 or self.kpd_batch_size >= 10,
            "kpd_batch_size must be 0 (protocol default) or at least 10",
        )
        require(
            self.fpd_bootstrap == 0 or self.fpd_bootstrap >= 2,
            "fpd_bootstrap must be 0 (protocol default) or at least 2",
        )
        require(self.max_events >= 0, "max_events must be >= 0 (0: all events)")
        require(self.trace_rebin >= 1, "trace_rebin must be >= 1")
        unknown = sorted(set(self.legacy) - set(LEGACY_SWITCHES))
        require(
            not unknown and isinstance(self.legacy, tuple),
            f"unknown legacy switch(es) {', '.join(unknown)}; use " + ", ".join(LEGACY_SWITCHES),
        )

    def classifier_settings(self) -> metrics.ClassifierSettings:
        preset = "calochallenge" if self.protocol == "calochallenge" else self.classifier_preset
        s = metrics.ClassifierSettings.preset(preset)
        s = s.replace(n_runs=self.classifier_runs) if self.classifier_runs else s
        if "float64" in self.legacy:
            s = s.replace(dtype="float64")
        if "cc-classifier" in self.legacy:
            s = s.replace(n_runs=1, equal_sizes=True)
        return s

    def kpd_batch(self) -> int:
        """KPD batch size: the setting, else 10 000 (published, §3.3) under the calochallenge
        protocol and 5 000 under the faster detgan default."""
        if self.kpd_batch_size:
            return self.kpd_batch_size
        return 10000 if self.protocol == "calochallenge" else 5000

    def fpd_draws(self, n_features: int = 0) -> int:
        """FPD draws per batch size: the setting, else 20 (published, §3.3) under the
        calochallenge protocol and, under the detgan default, 10 (5 for more than 100 features:
        a draw costs ∝ features², 0.3 s at the 362 of CaloChallenge dataset 2)."""
        if self.fpd_bootstrap:
            return self.fpd_bootstrap
        if self.protocol == "calochallenge":
            return 20
        return 5 if n_features > 100 else 10

    def classifier_seed(self) -> int | None:
        """The classifier seed; None (drawn, then recorded) under ``cc-classifier`` (§A.10)."""
        return None if "cc-classifier" in self.legacy else self.seed


@dataclasses.dataclass
class FamilyData:
    """What the metrics need from one sample of one data family (all event-major).

    ``features`` (N,) per event (NaN = undefined); ``pooled`` 1-D arrays of any length
    (per-station features); ``low`` (N, d) low-level classifier input; ``high`` (N, h) the
    high-level vector (None: built from ``features`` standardised with the reference);
    ``cells`` (N, D) for per-cell statistics; ``corr`` (N, c) for the correlation matrix;
    ``condition`` (N,) log10 of the conditioning energy or None; ``images`` mean images.
    """

    family: str
    features: dict[str, np.ndarray]
    low: np.ndarray
    cells: np.ndarray
    corr: np.ndarray
    condition: np.ndarray | None = None
    high: np.ndarray | None = None
    pooled: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    bins: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.low)

    def select(self, index: np.ndarray) -> FamilyData:
        """The events ``index`` (sorted); a pooled array follows its events when it has an owner
        array (``_owner_<name>``, or ``_event`` shared by all), else it is dropped."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        pooled = {}
        for name, values in self.pooled.items():
            owner = self.pooled.get(f"_owner_{name}", self.pooled.get("_event"))
            owner = values if name.startswith("_owner_") else owner
            if owner is not None and len(owner) == len(values):
                pooled[name] = values[np.isin(owner.astype(np.int64), index)]
        return dataclasses.replace(
            self,
            features={k: v[index] for k, v in self.features.items()},
            low=self.low[index],
            cells=self.cells[index],
            corr=self.corr[index],
            condition=pick(self.condition),
            high=pick(self.high),
            pooled=pooled,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat name → array mapping for the pickle-free cache."""
        out = {f"features/{k}": v for k, v in self.features.items()}
        out.update({f"pooled/{k}": v for k, v in self.pooled.items()})
        out.update({f"images/{k}": v for k, v in self.images.items()})
        out.update({f"bins/{k}": v for k, v in self.bins.items()})
        out.update(low=self.low, cells=self.cells, corr=self.corr)
        if self.condition is not None:
            out["condition"] = self.condition
        if self.high is not None:
            out["high"] = self.high
        return out

    @classmethod
    def from_arrays(
        cls,
        family: str,
        arrays: Mapping[str, np.ndarray],
        labels: dict[str, str],
        meta: dict[str, Any],
    ) -> FamilyData:
        group = lambda p: {k[len(p) + 1 :]: v for k, v in arrays.items() if k.startswith(p + "/")}  # noqa: E731
        return cls(
            family,
            group("features"),
            arrays["low"],
            arrays["cells"],
            arrays["corr"],
            arrays.get("condition"),
            arrays.get("high"),
            group("pooled"),
            group("images"),
            labels,
            group("bins"),
            meta,
        )


def _high(ref: FamilyData, cand: FamilyData) -> tuple[np.ndarray, np.ndarray]:
    """High-level inputs: given vectors, or the features standardised with the reference."""
    if ref.high is not None and cand.high is not None:
        return _fill_undefined(ref.high, cand.high)
    names = sorted(ref.features)
    xr, _ = observables.feature_matrix(ref.features, names, ref.features)
    xc, _ = observables.feature_matrix(cand.features, names, ref.features)
    if xr.shape[1] != xc.shape[1]:  # indicator columns differ: rebuild with both NaN patterns
        joint = {k: np.concatenate([ref.features[k], cand.features[k]]) for k in names}
        both, _ = observables.feature_matrix(joint, names, ref.features)
        xr, xc = both[: len(ref)], both[len(ref) :]
    if ref.condition is not None and cand.condition is not None:
        mu, sd = ref.condition.mean(), ref.condition.std() or 1.0
        xr = np.concatenate([((ref.condition - mu) / sd)[:, None], xr], 1)
        xc = np.concatenate([((cand.condition - mu) / sd)[:, None], xc], 1)
    return xr, xc


def _fill_undefined(xr: np.ndarray, xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undefined (NaN) entries → the reference column mean, plus one 0/1 indicator column per
    column that has any (§3.2 high-level inputs of other formats)."""
    bad_r, bad_c = np.isnan(xr), np.isnan(xc)
    cols = np.nonzero(bad_r.any(0) | bad_c.any(0))[0]
    if not cols.size:
        return xr, xc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fill = np.nan_to_num(np.nanmean(xr, 0))
    out = []
    for x, bad in ((xr, bad_r), (xc, bad_c)):
        x = np.where(bad, fill, x)
        out.append(np.concatenate([x, bad[:, cols].astype(np.float64)], 1))
    return out[0], out[1]


def _feature_metrics(
    ref: Mapping[str, np.ndarray],
    cand: Mapping[str, np.ndarray],
    bins: Mapping[str, np.ndarray],
    s: EvaluationSettings,
) -> dict[str, Any]:
    out = {}
    common = [k for k in ref if k in cand and not k.startswith("_")]  # the family's own order
    for k, name in enumerate(common):
        r, c = np.asarray(ref[name], np.float64), np.asarray(cand[name], np.float64)
        r_w, c_w = _cap(r, s.seed), _cap(c, s.seed + 1)  # W1/KS on ≤ 250 000 values; S on all
        if np.isnan(r).all() or np.isnan(c).all():
            out[name] = {
                "undefined_reference": int(np.isnan(r).sum()),
                "undefined_candidate": int(np.isnan(c).sum()),
                "note": "no defined values",
            }
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sep = metrics.separation_power(r, c, bins.get(name))
        w1 = metrics.wasserstein_1d(r_w, c_w, n_bootstrap=s.n_bootstrap, seed=s.seed + k)
        ks = metrics.ks_test(r_w, c_w)
        out[name] = {
            "wasserstein": w1.value,
            "wasserstein_error": w1.error,
            "ks": ks.statistic,
            "ks_pvalue": ks.pvalue,
            **_prefixed("separation", sep),
            **_moments(r, "reference"),
            **_moments(c, "candidate"),
        }
    return out


def _moments(x: np.ndarray, who: str) -> dict[str, float]:
    """Mean and standard deviation of the defined (finite) values, as ``mean_<who>``,
    ``std_<who>`` (what a physicist compares first)."""
    x = x[np.isfinite(x)]
    return {f"mean_{who}": float(x.mean()), f"std_{who}": float(x.std())} if x.size else {}


def _cap(x: np.ndarray, seed: int, limit: int = 250_000) -> np.ndarray:
    """A seeded random subset of ``limit`` values of very long pooled arrays (voxels)."""
    if x.size <= limit:
        return x
    return np.random.default_rng(seed).choice(x, limit, replace=False)


def _prefixed(prefix: str, result: Any) -> dict[str, Any]:
    d = result.to_dict()
    d = {("" if k == "value" else k): v for k, v in d.items() if not k.startswith("n_")}
    return {(prefix if not k else f"{prefix}_{k}"): v for k, v in d.items()}


def compare(
    ref: FamilyData,
    cand: FamilyData,
    settings: EvaluationSettings,
    *,
    classifier: bool | None = None,
) -> dict[str, Any]:
    """Every distance of §3 between two samples of one family; a JSON-ready dict with timings."""
    s = settings
    out: dict[str, Any] = {"n_reference": len(ref), "n_candidate": len(cand), "timing_s": {}}
    clock = _Clock(out["timing_s"])
    with clock("features"):
        out["features"] = _feature_metrics(ref.features, cand.features, ref.bins, s)
        if ref.pooled and cand.pooled:
            out["pooled"] = _feature_metrics(ref.pooled, cand.pooled, ref.bins, s)
    with clock("cells"):
        out["cells"] = metrics.cell_statistics(ref.cells, cand.cells).summary()
        out["correlation"] = _correlation(ref, cand, s)
    if ref.condition is not None and cand.condition is not None:
        ks = metrics.ks_test(ref.condition, cand.condition)
        out["condition_ks"] = {"statistic": ks.statistic, "pvalue": ks.pvalue}
    high_r, high_c = _high(ref, cand)
    if s.fpd:
        with clock("fpd_kpd"):
            out["fpd"] = _distance_x1e3(
                metrics.frechet_physics_distance(
                    high_r, high_c, n_bootstrap=s.fpd_draws(high_r.shape[1]), seed=42
                )
            )
            out["kpd"] = _distance_x1e3(
                metrics.kernel_physics_distance(high_r, high_c, batch_size=s.kpd_batch(), seed=42)
            )
            out["fpd"]["draws_per_size"] = s.fpd_draws(high_r.shape[1])
            out["kpd"]["batch_size"] = s.kpd_batch()
    if s.prdc:
        with clock("prdc"):
            # §3.4: log10 of the cells, exact zeros → 0.1 MeV (not the classifier input)
            rep_r, rep_c = nn_representation(ref), nn_representation(cand)
            out["prdc"] = metrics.prdc(rep_r, rep_c).to_dict()
    if s.classifier if classifier is None else classifier:
        cs = s.classifier_settings()
        for name, (xr, xc) in (("low", (ref.low, cand.low)), ("high", (high_r, high_c))):
            with clock(f"classifier_{name}"):
                res = metrics.classifier_two_sample_test(
                    xr, xc, seed=s.classifier_seed(), settings=cs, device=s.device
                )
            out[f"classifier_{name}"] = res.to_dict()
    return out


def _correlation(ref: FamilyData, cand: FamilyData, s: EvaluationSettings) -> dict[str, Any]:
    """Correlation MSE (§3.5); small matrices (d ≤ 50, e.g. layer energies) are stored too,
    rows reversed under the ``cc-correlation`` switch (§A.12)."""
    res = metrics.correlation_mse(ref.corr, cand.corr)
    out = res.to_dict()
    if len(res.corr_reference) <= 50:
        flip = (lambda m: m[::-1]) if "cc-correlation" in s.legacy else (lambda m: m)  # noqa: E731
        out["matrix_reference"] = np.round(flip(res.corr_reference), 6).tolist()
        out["matrix_candidate"] = np.round(flip(res.corr_candidate), 6).tolist()
        out["matrix_order"] = (
            "rows reversed (legacy A.12)" if "cc-correlation" in s.legacy else ("natural")
        )
    return out


def _distance_x1e3(d: metrics.Distance) -> dict[str, Any]:
    return {"value_x1e3": d.value * 1e3, "error_x1e3": d.error * 1e3, "seed": d.seed}


class _Clock:
    def __init__(self, store: dict[str, float]) -> None:
        self.store = store

    def __call__(self, name: str):
        store = self.store

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                store[name] = round(time.perf_counter() - self.t, 3)

        return _Ctx()


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random halves A, B of range(n) from ``default_rng([seed, 8])`` (§3.8 split-half floor)."""
    perm = np.random.default_rng([seed, 8]).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 : 2 * (n // 2)])


def nn_representation(data: FamilyData) -> np.ndarray:
    """Event vectors for nearest-neighbour checks (§3.4, §3.6), (N, D).

    Calorimeter families: log10 of the cells with cells that are exactly 0 replaced by 0.1 MeV
    (→ −1; values between 0 and 0.1 MeV keep their own logarithm); air-shower families: the
    cells as stored (already log10(S + 1) per station).
    """
    if data.family in AIRSHOWER_KINDS:
        return np.asarray(data.cells, np.float64)
    cells = np.asarray(data.cells, np.float64)
    return np.log10(np.where(cells == 0, 0.1, np.abs(cells)))


def memorisation_with_floor(
    train: FamilyData, ref: FamilyData, cand: FamilyData, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Memorisation check of the candidate (H = reference) and its floor (G = reference half B,
    H = half A): (metrics entry, floor entry)."""
    t, h, g = (nn_representation(d) for d in (train, ref, cand))
    main = metrics.memorisation_check(t, h, g, seed=seed).to_dict()
    a, b = split_halves(len(h), seed)
    floor = metrics.memorisation_check(t, h[a], h[b], seed=seed).to_dict()
    return main, floor
