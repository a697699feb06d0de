"""Config base and ConfigGroup: validation, unknown names, JSON round trips, overrides."""

from __future__ import annotations

import dataclasses

import pytest

from detgan.config import Config, ConfigGroup, parse_assignments, require
from detgan.utils import DetganError


@dataclasses.dataclass(frozen=True)
class _Model(Config):
    width: int = 8
    dropout: float = 0.1

    def validate(self) -> None:
        require(self.width > 0, f"width={self.width} must be positive")


@dataclasses.dataclass(frozen=True)
class _Train(Config):
    lr: float = 1e-3
    name: str = "x"


@dataclasses.dataclass(frozen=True)
class _Setup(ConfigGroup):
    model: _Model
    train: _Train


def test_config_validates_coerces_and_refuses_unknown_names():
    assert _Model.from_dict({"width": "4"}).width == 4
    assert _Model().replace(dropout=1).dropout == 1.0
    with pytest.raises(DetganError, match="width=0 must be positive"):
        _Model(width=0)
    with pytest.raises(DetganError, match="unknown setting.*widht.*valid settings: width, dropout"):
        _Model().replace(widht=3)
    with pytest.raises(DetganError, match="must be an integer"):
        _Model().replace(width=1.5)
    with pytest.raises(DetganError, match="is not finite"):
        _Model(dropout=float("nan"))


def test_group_round_trip_and_routed_overrides():
    setup = _Setup(_Model(), _Train())
    assert _Setup.from_json(setup.to_json()) == setup
    changed = setup.with_overrides(parse_assignments(["width=16", "lr=0.01"]))
    assert changed.model.width == 16 and changed.train.lr == 0.01
    assert changed.model.dropout == setup.model.dropout
    with pytest.raises(DetganError, match="unknown setting 'depth'; valid settings: dropout, lr"):
        setup.with_overrides({"depth": 3})
