"""Flat CORSIKA five-layer atmosphere (model 17) and the generalised-Gumbel Xmax model.

References: the atmosphere parameterisation of CORSIKA (model 17, "US standard after
Keilhauer"); the Xmax parameterisation of De Domenico et al., JCAP 07 (2013) 050, with the
EPOS-LHC coefficients. Exact definitions: ``airshower.md`` §5 and §6.
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma, polygamma

__all__ = [
    "vertical_depth",
    "slant_depth",
    "height_at_depth",
    "gumbel_parameters",
    "xmax_moments",
    "sample_xmax",
    "EPOS_LHC",
]

#: Layer boundaries h_b [m] and the constants a_i, b_i [g/cm²], c_i [m] of model 17.
_H_B = np.array([0.0, 7000.0, 11400.0, 37000.0, 100000.0])
_A = np.array([-149.801663, -57.932486, 0.63631894, 4.35453690e-4, 0.01128292])
_B = np.array([1183.6071, 1143.0425, 1322.9748, 655.67307, 1.0])
_C = np.array([9542.4834, 8000.0534, 6295.6893, 7375.2177, 1.0e7])
#: Height at which layer 4 reaches zero depth [m].
TOP_OF_ATMOSPHERE = _A[4] * _C[4] / _B[4]


def vertical_depth(h: np.ndarray | float) -> np.ndarray:
    """Vertical atmospheric depth X_v(h) in g/cm² at height ``h`` in m (any shape)."""
    h = np.asarray(h, dtype=np.float64)
    layer = np.clip(np.searchsorted(_H_B, h, side="left") - 1, 0, 4)
    a, b, c = _A[layer], _B[layer], _C[layer]
    exp_form = a + b * np.exp(-h / c)
    lin_form = a - b * h / c
    return np.where(layer < 4, exp_form, np.maximum(lin_form, 0.0))


def slant_depth(h: np.ndarray | float, cos_theta: np.ndarray | float) -> np.ndarray:
    """Slant depth X_v(h)/cosθ (flat atmosphere, no curvature correction)."""
    return vertical_depth(h) / np.asarray(cos_theta, dtype=np.float64)


#: Vertical depths at the layer boundaries, decreasing with height.
_X_B = vertical_depth(_H_B)


def height_at_depth(x: np.ndarray | float, cos_theta: np.ndarray | float = 1.0) -> np.ndarray:
    """Height H(X, θ) in m at which the slant depth equals ``x`` g/cm² (inverse of the above)."""
    xv = np.asarray(x, dtype=np.float64) * np.asarray(cos_theta, dtype=np.float64)
    # Layer whose depth interval (X_b[m+1], X_b[m]] contains xv; deeper than ground -> layer 0.
    layer = np.clip(np.searchsorted(-_X_B, -xv, side="left") - 1, 0, 4)
    a, b, c = _A[layer], _B[layer], _C[layer]
    with np.errstate(invalid="ignore", divide="ignore"):
        exp_form = -c * np.log((xv - a) / b)
    lin_form = c * (a - xv) / b
    h = np.where(layer < 4, exp_form, lin_form)
    return np.where(xv <= 0, TOP_OF_ATMOSPHERE, h)


#: EPOS-LHC coefficients c = c0 + c1·ln A + c2·(ln A)² (De Domenico et al. 2013, Table).
EPOS_LHC: dict[str, tuple[float, float, float]] = {
    "p0": (775.589, -7.047, -2.427),
    "p1": (57.589, -0.743, 0.214),
    "p2": (-0.820, -0.169, -0.027),
    "q0": (29.403, 13.553, -3.154),
    "q1": (0.096, -0.961, 0.150),
    "l0": (0.563, 0.711, 0.058),
    "l1": (0.039, 0.067, -0.004),
}


def gumbel_parameters(
    lg_e: np.ndarray | float, mass_number: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(μ, σ, λ) of the generalised Gumbel Xmax distribution at lgE = log10(E/eV)."""
    ln_a = np.log(mass_number)
    c = {k: v[0] + v[1] * ln_a + v[2] * ln_a**2 for k, v in EPOS_LHC.items()}
    le = np.asarray(lg_e, dtype=np.float64) - 19.0
    mu = c["p0"] + c["p1"] * le + c["p2"] * le**2
    sigma = c["q0"] + c["q1"] * le
    lam = c["l0"] + c["l1"] * le
    return mu, sigma, lam


def xmax_moments(
    lg_e: np.ndarray | float, mass_number: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Analytic mean and standard deviation of Xmax: μ − σ(ψ(λ) − ln λ) and σ·√ψ′(λ)."""
    mu, sigma, lam = gumbel_parameters(lg_e, mass_number)
    mean = mu - sigma * (digamma(lam) - np.log(lam))
    std = sigma * np.sqrt(polygamma(1, lam))
    return mean, std


def sample_xmax(rng: np.random.Generator, lg_e: np.ndarray, mass_number: float = 1.0) -> np.ndarray:
    """Draw Xmax = μ − σ·ln G with G ~ Gamma(λ, scale 1/λ), one per entry of ``lg_e``."""
    mu, sigma, lam = gumbel_parameters(lg_e, mass_number)
    g = rng.gamma(lam, 1.0 / lam)
    return mu - sigma * np.log(g)
