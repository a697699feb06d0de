"""Effective homogeneous calorimeter media for the parameterised e.m. shower simulation.

A sampling calorimeter is described, as in Grindhammer and Peters (hep-ex/0001020, [GP00]), by
one effective medium: atomic number Z, radiation length X0, Molière radius R_M, critical
energy E_c and the stochastic term a of the relative energy resolution a/√(E/GeV). Values are
those of ``calorimeter.md`` §1.
"""

from __future__ import annotations

import dataclasses

from detgan.config import pick_preset

__all__ = ["Medium", "MEDIA", "get_medium"]


@dataclasses.dataclass(frozen=True)
class Medium:
    """An effective calorimeter medium.

    Attributes:
        name: short identifier, e.g. ``"pb-lar"``.
        z: effective atomic number Z.
        x0: radiation length X0 in mm.
        rm: Molière radius R_M in mm.
        ec: critical energy E_c in MeV.
        sampling: stochastic term a; the relative resolution is a/√(E/GeV).
    """

    name: str
    z: float
    x0: float
    rm: float
    ec: float
    sampling: float

    def to_dict(self) -> dict[str, float | str]:
        return dataclasses.asdict(self)


MEDIA: dict[str, Medium] = {
    "pb-lar": Medium("pb-lar", z=82.0, x0=15.6, rm=33.0, ec=10.0, sampling=0.10),
    "pb-sci": Medium("pb-sci", z=82.0, x0=17.0, rm=35.0, ec=10.0, sampling=0.10),
    "w-si": Medium("w-si", z=74.0, x0=4.25, rm=9.3, ec=8.0, sampling=0.17),
}


def get_medium(name: str) -> Medium:
    """The named medium of :data:`MEDIA` (``DetganError`` listing the choices otherwise)."""
    return pick_preset(MEDIA, name, "medium")
