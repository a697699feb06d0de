"""Classifier two-sample test: a dense network separates reference from candidate events.

The protocol of the CaloChallenge 2022 evaluation (arXiv:2410.21611; ``formats_and_metrics.md``
§3.2): balanced classes, per-class train/test/validation split, best-test-accuracy epoch,
isotonic calibration fitted on the test split, and the calibrated AUC and JSD on the
validation split, repeated over seeded runs. Re-exported by :mod:`detgan.metrics`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from detgan.config import Config, pick_preset, require
from detgan.utils import DetganError

__all__ = [
    "ClassifierSettings",
    "ClassifierResult",
    "CLASSIFIER_PRESETS",
    "roc_auc",
    "isotonic_fit",
    "classifier_two_sample_test",
]


@dataclasses.dataclass(frozen=True)
class ClassifierSettings(Config):
    """Network and training of the classifier two-sample test (§3.2).

    ``preset('calochallenge')`` is the published protocol exactly (3 × 2048 units, Adam 2·10⁻⁴,
    50 epochs, 10 runs, no input standardisation); ``preset('fast')`` (the default: 2 × 128
    units, at most 2¹⁸ first-layer weights, 15 epochs with patience 5, 3 runs) is sized to
    evaluate two 20 000-event samples in a few minutes on 2 CPU cores. ``equal_sizes`` refuses
    samples of different sizes instead of subsampling (the published code, §A.10).
    """

    hidden: int = 128
    n_layers: int = 2
    dropout: float = 0.0
    learning_rate: float = 1e-3
    batch_size: int = 500
    epochs: int = 15
    n_runs: int = 3
    standardize: bool = True
    dtype: str = "float32"
    max_per_class: int = 0
    equal_sizes: bool = False
    max_input_weights: int = 0
    patience: int = 0

    def width_for(self, d_in: int) -> int:
        """Hidden width used for ``d_in`` inputs: ``hidden``, halved (not below 16) while the
        first layer would have more than ``max_input_weights`` weights (0: never halved)."""
        h = self.hidden
        while self.max_input_weights and h > 16 and d_in * h > self.max_input_weights:
            h //= 2
        return h

    def validate(self) -> None:
        require(
            self.hidden >= 1 and self.n_layers >= 1, "classifier needs hidden >= 1, n_layers >= 1"
        )
        require(0.0 <= self.dropout < 1.0, f"classifier dropout={self.dropout} must be in [0, 1)")
        require(self.learning_rate > 0, "classifier learning_rate must be positive")
        require(self.batch_size >= 1 and self.epochs >= 1, "classifier batch_size, epochs >= 1")
        require(self.n_runs >= 1, f"classifier n_runs={self.n_runs} must be at least 1")
        require(self.dtype in ("float32", "float64"), "classifier dtype must be float32 or float64")
        require(self.max_per_class >= 0, "classifier max_per_class must be >= 0 (0: no cap)")
        require(self.max_input_weights >= 0, "classifier max_input_weights must be >= 0")
        require(self.patience >= 0, "classifier patience must be >= 0 (0: all epochs)")

    @classmethod
    def preset(cls, name: str) -> ClassifierSettings:
        return pick_preset(CLASSIFIER_PRESETS, name, "classifier preset")


CLASSIFIER_PRESETS: dict[str, ClassifierSettings] = {
    # 2 × 128 units, but narrower for very wide inputs (CaloChallenge dataset-2 voxels: 6481
    # inputs → 32 units) so that the first layer stays ≤ 2¹⁸ weights: the cost of a run is then
    # about the same for every data family (formats_and_metrics.md §3.2 is `calochallenge`)
    # stop 5 epochs after the best test accuracy: samples close to the reference peak early
    "fast": ClassifierSettings(max_input_weights=2**18, patience=5),
    "calochallenge": ClassifierSettings(
        hidden=2048,
        n_layers=3,
        learning_rate=2e-4,
        batch_size=1000,
        epochs=50,
        n_runs=10,
        standardize=False,
    ),
}

#: Published per-class (train, test, validation) counts, keyed by the per-class size (§3.2).
_PUBLISHED_SPLITS = {
    121000: (80000, 20000, 21000),
    120800: (80000, 20000, 20800),
    100000: (60000, 20000, 20000),
}


@dataclasses.dataclass(frozen=True)
class ClassifierResult:
    """Calibrated AUC and JSD of the classifier test: mean and std (ddof = 1) over the runs.

    ``runs`` holds every run's values (calibrated and raw AUC, JSD, BCE, accuracy, best epoch,
    calibration curve); ``n_per_class`` the balanced size used, ``n_dropped`` the events
    removed from the larger sample to balance the classes.
    """

    auc: float
    auc_std: float
    jsd: float
    jsd_std: float
    runs: tuple[dict[str, Any], ...]
    n_per_class: int
    n_dropped: int
    seed: int
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["runs"] = list(self.runs)
        out["std_ddof"] = 1
        return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC area = P(score_pos > score_neg) + ½ P(tie) (Mann–Whitney with average ranks)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(s.size)
    starts = np.r_[0, np.nonzero(np.diff(s))[0] + 1]
    ends = np.r_[starts[1:], s.size]
    for a, b in zip(starts, ends):  # average rank over ties
        ranks[a:b] = 0.5 * (a + b - 1) + 1
    rank_of = np.empty_like(ranks)
    rank_of[order] = ranks
    return float((rank_of[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def isotonic_fit(x: np.ndarray, y: np.ndarray, *, y_min: float = 1e-6, y_max: float = 1 - 1e-6):
    """Monotone non-decreasing least-squares fit of y on x (pool-adjacent-violators).

    Returns a function mapping new x to the fit, linear between the fitted points and clipped
    to the fitted range at both ends, outputs bounded to [y_min, y_max] (§3.2 calibration).
    """
    xu, inverse = np.unique(np.asarray(x, np.float64), return_inverse=True)
    w = np.bincount(inverse).astype(np.float64)
    v = np.bincount(inverse, weights=np.asarray(y, np.float64)) / w
    vals, wts, lens = [], [], []
    for vi, wi in zip(v, w):
        vals.append(vi), wts.append(wi), lens.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            merged = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            n = lens[-2] + lens[-1]
            del vals[-1], wts[-1], lens[-1]
            vals[-1], wts[-1], lens[-1] = merged, wsum, n
    fitted = np.clip(np.repeat(vals, lens), y_min, y_max)
    return lambda z: np.interp(np.asarray(z, np.float64), xu, fitted)


def _make_classifier(d_in: int, s: ClassifierSettings) -> torch.nn.Sequential:
    """Dense net: [Linear → LeakyReLU(0.01) → Dropout(p)] × n_layers → Linear(·, 1) (a logit),
    hidden width ``s.width_for(d_in)``."""
    layers: list[torch.nn.Module] = []
    width, hidden = d_in, s.width_for(d_in)
    for _ in range(s.n_layers):
        layers += [
            torch.nn.Linear(width, hidden),
            torch.nn.LeakyReLU(0.01),
            torch.nn.Dropout(s.dropout),
        ]
        width = hidden
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


def _split_counts(n: int) -> tuple[int, int, int]:
    if n in _PUBLISHED_SPLITS:
        return _PUBLISHED_SPLITS[n]
    n_train, n_test = int(0.6 * n), int(0.2 * n)
    return n_train, n_test, n - n_train - n_test


def _balanced_splits(ref: np.ndarray, cand: np.ndarray, n: int, rng: np.random.Generator):
    """Per class: subsample to n, shuffle, cut (train, test, val); merge classes and shuffle."""
    counts = np.cumsum(_split_counts(n))
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[], [], []]
    for x, label in ((cand, 0.0), (ref, 1.0)):  # generated = 0, reference = 1
        idx = rng.permutation(len(x))[:n]
        for k, chunk in enumerate(np.split(idx, counts[:2])):
            parts[k].append((x[chunk], np.full(chunk.size, label)))
    out = []
    for part in parts:
        xs = np.concatenate([p[0] for p in part])
        ys = np.concatenate([p[1] for p in part])
        perm = rng.permutation(len(ys))
        out.append((xs[perm], ys[perm]))
    return out


def _predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 20000) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + batch]).squeeze(1) for i in range(0, len(x), batch)])
    return torch.sigmoid(logits).cpu().double().numpy()


def _train_classifier(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, np.ndarray],
    s: ClassifierSettings,
    generator: torch.Generator,
) -> tuple[torch.nn.Module, int]:
    """Adam + BCE on logits; keep the epoch with the best test accuracy; stop at accuracy 1
    (and, with ``patience``, that many epochs after the best one)."""
    x, y = train
    model = _make_classifier(x.shape[1], s).to(device=x.device, dtype=x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best_acc, best_epoch, best_state = -1.0, 0, None
    for epoch in range(s.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=generator).to(x.device)
        for i in range(0, len(x), s.batch_size):
            idx = perm[i : i + s.batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]).squeeze(1), y[idx]).backward()
            opt.step()
        acc = float(np.mean((_predict(model, test[0]) > 0.5) == (test[1] > 0.5)))
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if acc >= 1.0 or (s.patience and epoch - best_epoch >= s.patience):
            break
    model.load_state_dict(best_state)
    return model, best_epoch


def _calibration_curve(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> dict[str, list]:
    which = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_p = np.bincount(which, weights=p, minlength=n_bins) / count
        frac = np.bincount(which, weights=y, minlength=n_bins) / count
    clean = lambda a: [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
    return {
        "mean_predicted": clean(mean_p),
        "fraction_reference": clean(frac),
        "count": count.tolist(),
    }


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _one_run(ref, cand, n, s, seed, run, device) -> dict[str, Any]:
    rng = np.random.default_rng([seed, run])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    dtype = torch.float64 if s.dtype == "float64" else torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**62)))  # network initialisation
        (xtr, ytr), (xte, yte), (xva, yva) = _balanced_splits(ref, cand, n, rng)
        t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        model, best_epoch = _train_classifier((t(xtr), t(ytr)), (t(xte), yte), s, gen)
        p_test, p_val = _predict(model, t(xte)), _predict(model, t(xva))
    p_cal = isotonic_fit(p_test, yte)(p_val)
    bce_cal = _bce(p_cal, yva)
    return {
        "run": run,
        "auc": roc_auc(p_cal, yva),
        "jsd": 1.0 - bce_cal / math.log(2.0),
        "auc_uncalibrated": roc_auc(p_val, yva),
        "bce_uncalibrated": _bce(p_val, yva),
        "bce_calibrated": bce_cal,
        "accuracy": float(np.mean((p_val > 0.5) == (yva > 0.5))),
        "best_epoch": best_epoch,
        "calibration": _calibration_curve(p_cal, yva),
    }


def _class_size(ref: np.ndarray, cand: np.ndarray, s: ClassifierSettings) -> int:
    """Balanced per-class size n = min(N, M) (capped at ``max_per_class``); checks §A.10."""
    if s.equal_sizes and len(ref) != len(cand):
        raise DetganError(
            f"classifier_two_sample_test: the published protocol needs equal sample sizes, got "
            f"{len(ref)} reference and {len(cand)} candidate events; drop the legacy switch to "
            "subsample the larger one"
        )
    n = min(len(ref), len(cand))
    n = min(n, s.max_per_class) if s.max_per_class else n
    if n < 10:
        raise DetganError(
            f"classifier_two_sample_test needs at least 10 events per sample, got {n}"
        )
    return n


def classifier_two_sample_test(
    reference: Any,
    candidate: Any,
    *,
    seed: int | None = 0,
    settings: ClassifierSettings | str | None = None,
    n_runs: int | None = None,
    device: str | torch.device = "cpu",
) -> ClassifierResult:
    """Classifier two-sample test with calibrated AUC and JSD (CaloChallenge, arXiv:2410.21611).

    ``reference`` (N, D) and ``candidate`` (M, D) float arrays; labels reference = 1,
    candidate = 0. Per run r (seeds from ``numpy.random.default_rng([seed, r])``): subsample
    the larger class to n = min(N, M) (capped at ``settings.max_per_class``), split each class
    0.6/0.2/0.2 (published counts at the published sizes), train the dense net keeping the
    best test-accuracy epoch, fit an isotonic map test-probability → label, apply it on the
    validation split and compute

        AUC = ROC area of p_cal,  JSD = 1 − BCE(p_cal) / ln 2   (in bits; ≈ 0 for equal samples).

    Returns mean and std (ddof = 1) over ``n_runs`` runs. Inputs are standardised with the
    reference mean/std when ``settings.standardize`` (off in the 'calochallenge' preset).
    ``seed=None`` is the unseeded published behaviour (§A.10): a fresh seed is drawn from the
    operating system and recorded in the result, so even that run can be repeated.
    """
    from detgan.metrics import check_samples  # lazy: metrics re-exports this module

    s = _resolve_settings(settings, n_runs)
    dtype = np.float64 if s.dtype == "float64" else np.float32  # no float64 copy of big inputs
    ref, cand = check_samples(
        reference, candidate, ndim=2, what="classifier_two_sample_test", dtype=dtype
    )
    n = _class_size(ref, cand, s)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    if s.standardize:
        mu, sd = ref.mean(0, dtype=np.float64), ref.std(0, dtype=np.float64)
        sd[sd == 0] = 1.0
        mu, sd = mu.astype(dtype), sd.astype(dtype)
        ref, cand = (ref - mu) / sd, (cand - mu) / sd
    runs = tuple(_one_run(ref, cand, n, s, seed, r, torch.device(device)) for r in range(s.n_runs))
    aucs = np.array([r["auc"] for r in runs])
    jsds = np.array([r["jsd"] for r in runs])
    std = lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else float("nan")  # noqa: E731
    return ClassifierResult(
        float(aucs.mean()),
        std(aucs),
        float(jsds.mean()),
        std(jsds),
        runs,
        n,
        len(ref) + len(cand) - 2 * n,
        seed,
        {**s.to_dict(), "hidden_used": s.width_for(ref.shape[1]), "n_inputs": ref.shape[1]},
    )


def _resolve_settings(settings: ClassifierSettings | str | None, n_runs: int | None):
    if settings is None:
        s = CLASSIFIER_PRESETS["fast"]
    elif isinstance(settings, str):
        s = ClassifierSettings.preset(settings)
    else:
        s = settings
    return s.replace(n_runs=n_runs) if n_runs is not None else s
