"""Invertible preprocessing: log, standardise and Box-Cox with fit/forward/inverse/state.

Every transform maps tensors elementwise (statistics may be per feature or one scalar), is fitted
on training data once, and serialises to a ``state_dict`` of plain numbers, strings and tensors,
so that it can live inside a checkpoint loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from detgan.utils import DetganError

__all__ = [
    "Transform",
    "Identity",
    "Log",
    "Standardise",
    "BoxCox",
    "Chain",
    "transform_from_state",
]


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return torch.as_tensor(x)


class Transform:
    """Base class: ``fit(x)`` then ``forward(x)``/``inverse(y)``; ``state_dict`` round-trips."""

    name = "transform"

    def fit(self, x: Tensor) -> Transform:
        """Estimate parameters from ``x`` (N, ...); returns ``self``."""
        return self

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> Transform:
        return self


class Identity(Transform):
    """y = x."""

    name = "identity"

    def forward(self, x: Tensor) -> Tensor:
        return _as_tensor(x)

    def inverse(self, y: Tensor) -> Tensor:
        return _as_tensor(y)


class Log(Transform):
    """y = log10(x + offset) (``base=10``) or ln(x + offset); needs x + offset > 0."""

    name = "log"

    def __init__(self, offset: float = 1.0, base: float = 10.0) -> None:
        if base <= 0 or base == 1:
            raise DetganError(f"log base must be positive and not 1, got {base}")
        self.offset = float(offset)
        self.base = float(base)

    def forward(self, x: Tensor) -> Tensor:
        x = _as_tensor(x)
        if bool((x + self.offset <= 0).any()):
            raise DetganError(
                f"log transform needs x + {self.offset} > 0; raise the offset or clip the input"
            )
        return torch.log(x + self.offset) / math.log(self.base)

    def inverse(self, y: Tensor) -> Tensor:
        return torch.pow(self.base, _as_tensor(y)) - self.offset

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "offset": self.offset, "base": self.base}

    def load_state_dict(self, state: dict[str, Any]) -> Log:
        self.offset, self.base = float(state["offset"]), float(state["base"])
        return self


class Standardise(Transform):
    """y = (x − μ)/σ with μ, σ fitted per feature (``scalar=False``) or over all values.

    ``center=False`` keeps μ = 0 (a pure rescaling), which maps 0 to 0; footprints use it so
    that an untriggered station stays exactly 0. Features with σ = 0 get σ = 1.
    """

    name = "standardise"

    def __init__(self, scalar: bool = False, center: bool = True) -> None:
        self.scalar, self.center = scalar, center
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    def fit(self, x: Tensor) -> Standardise:
        x = _as_tensor(x).double()
        if x.shape[0] < 2:
            raise DetganError("standardise needs at least 2 events to fit")
        dims = tuple(range(x.ndim)) if self.scalar else (0,)
        mean = x.mean(dim=dims) if self.center else torch.zeros_like(x.mean(dim=dims))
        std = (x - mean).pow(2).mean(dim=dims).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        self.mean, self.std = mean.float(), std.float()
        return self

    def _params(self, like: Tensor) -> tuple[Tensor, Tensor]:
        if self.mean is None or self.std is None:
            raise DetganError("standardise transform used before fit(); fit it on training data")
        return self.mean.to(like.device, like.dtype), self.std.to(like.device, like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = _as_tensor(x)
        mean, std = self._params(x)
        return (x - mean) / std

    def inverse(self, y: Tensor) -> Tensor:
        y = _as_tensor(y)
        mean, std = self._params(y)
        return y * std + mean

    def state_dict(self) -> dict[str, Any]:
        self._params(torch.zeros(()))
        return {
            "name": self.name,
            "scalar": self.scalar,
            "center": self.center,
            "mean": self.mean,
            "std": self.std,
        }

    def load_state_dict(self, state: dict[str, Any]) -> Standardise:
        self.scalar, self.center = bool(state["scalar"]), bool(state["center"])
        self.mean, self.std = state["mean"].float(), state["std"].float()
        return self


class BoxCox(Transform):
    """Box-Cox: y = ((x + s)^λ − 1)/λ for λ ≠ 0, ln(x + s) for λ = 0; needs x + s > 0.

    ``fit`` chooses one λ over all values by maximising the Box-Cox profile log-likelihood
    L(λ) = −n/2·ln σ²_λ + (λ − 1)·Σ ln(x + s) on a grid in [−2, 2] refined by golden section.
    """

    name = "boxcox"

    def __init__(self, lam: float | None = None, shift: float = 0.0) -> None:
        self.lam = lam
        self.shift = float(shift)

    @staticmethod
    def _apply(x: Tensor, lam: float) -> Tensor:
        if abs(lam) < 1e-8:
            return torch.log(x)
        return (torch.pow(x, lam) - 1.0) / lam

    def _loglik(self, logs: Tensor, x: Tensor, lam: float) -> float:
        y = self._apply(x, lam)
        return float(-0.5 * x.numel() * torch.log(y.var(unbiased=False)) + (lam - 1) * logs.sum())

    def fit(self, x: Tensor) -> BoxCox:
        x = _as_tensor(x).double().flatten() + self.shift
        if bool((x <= 0).any()):
            raise DetganError("Box-Cox needs x + shift > 0 for every value; raise the shift")
        logs = torch.log(x)
        grid = torch.linspace(-2, 2, 41).tolist()
        best = max(grid, key=lambda lam: self._loglik(logs, x, lam))
        lo, hi = best - 0.1, best + 0.1
        ratio = (math.sqrt(5) - 1) / 2
        for _ in range(40):
            a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
            if self._loglik(logs, x, a) > self._loglik(logs, x, b):
                hi = b
            else:
                lo = a
        self.lam = 0.5 * (lo + hi)
        return self

    def _lam(self) -> float:
        if self.lam is None:
            raise DetganError("Box-Cox transform used before fit(); fit it or give lam")
        return float(self.lam)

    def forward(self, x: Tensor) -> Tensor:
        x = _as_tensor(x) + self.shift
        if bool((x <= 0).any()):
            raise DetganError("Box-Cox needs x + shift > 0 for every value; raise the shift")
        return self._apply(x, self._lam())

    def inverse(self, y: Tensor) -> Tensor:
        y, lam = _as_tensor(y), self._lam()
        if abs(lam) < 1e-8:
            return torch.exp(y) - self.shift
        return torch.pow(torch.clamp(lam * y + 1.0, min=0.0), 1.0 / lam) - self.shift

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lam": self._lam(), "shift": self.shift}

    def load_state_dict(self, state: dict[str, Any]) -> BoxCox:
        self.lam, self.shift = float(state["lam"]), float(state["shift"])
        return self


class Chain(Transform):
    """Composition: forward applies the parts in order, inverse in reverse order."""

    name = "chain"

    def __init__(self, *parts: Transform) -> None:
        self.parts = list(parts)

    def fit(self, x: Tensor) -> Chain:
        x = _as_tensor(x)
        for part in self.parts:
            x = part.fit(x).forward(x)
        return self

    def forward(self, x: Tensor) -> Tensor:
        for part in self.parts:
            x = part.forward(x)
        return _as_tensor(x)

    def inverse(self, y: Tensor) -> Tensor:
        for part in reversed(self.parts):
            y = part.inverse(y)
        return _as_tensor(y)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> Chain:
        self.parts = [transform_from_state(s) for s in state["parts"]]
        return self


_REGISTRY: dict[str, type[Transform]] = {
    cls.name: cls for cls in (Identity, Log, Standardise, BoxCox, Chain)
}


def transform_from_state(state: dict[str, Any]) -> Transform:
    """Rebuild a transform from its ``state_dict``."""
    name = state.get("name")
    if name not in _REGISTRY:
        raise DetganError(f"unknown transform '{name}' in saved state; the file may be newer")
    return _REGISTRY[name].__new__(_REGISTRY[name]).load_state_dict(state)
