"""detgan: fast particle-detector simulation with Wasserstein adversarial networks."""

from __future__ import annotations

__all__ = ["__version__", "DetganError"]

__version__ = "0.1.0"

from detgan.utils import DetganError  # noqa: E402
