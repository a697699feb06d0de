"""Frozen, validated configuration dataclasses: the base class, presets and load/save.

Every component keeps its own config class (next to the component) derived from
:class:`Config`. A setting a component does not accept is not a field, so a typo in a config
file or a ``--set key=value`` option fails loudly with the list of valid names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from detgan.utils import DetganError

__all__ = [
    "Config",
    "ConfigGroup",
    "require",
    "pick_preset",
    "parse_assignments",
    "load_config_file",
]

C = TypeVar("C", bound="Config")


def require(condition: bool, message: str) -> None:
    """Raise :class:`DetganError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DetganError(message)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of all configs: validated on construction, serialisable, replaceable by name."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise DetganError(f"config value {field.name}={value} is not finite")
        self.validate()

    def validate(self) -> None:
        """Check the values; subclasses raise :class:`DetganError` naming the bad field."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        _check_names(cls, values)
        return cls(**_coerce(cls, values))

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied and validated; unknown names are refused."""
        _check_names(type(self), changes)
        return dataclasses.replace(self, **_coerce(type(self), changes))

    def differences(self, other: Config) -> list[str]:
        """Names of the fields whose values differ from ``other``."""
        return [n for n in self.field_names() if getattr(self, n) != getattr(other, n)]


@dataclasses.dataclass(frozen=True)
class ConfigGroup:
    """The configs of one run (e.g. ``model``, ``train``, ``data``), stored and overridden together.

    Subclasses declare one :class:`Config` field per part. ``with_overrides`` routes each
    setting name to the part that has it, so ``--set lr=1e-4`` needs no prefix; a name no part
    has is refused with the list of valid names.
    """

    def parts(self) -> dict[str, Config]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps({k: v.to_dict() for k, v in self.parts().items()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ConfigGroup:
        values = json.loads(text)
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        return cls(**{f.name: hints[f.name].from_dict(values[f.name]) for f in fields})

    def with_overrides(self, values: Mapping[str, Any]) -> ConfigGroup:
        parts = self.parts()
        changes: dict[str, dict[str, Any]] = {k: {} for k in parts}
        for name, value in values.items():
            owner = [k for k, part in parts.items() if name in part.field_names()]
            if not owner:
                valid = sorted(n for part in parts.values() for n in part.field_names())
                raise DetganError(f"unknown setting '{name}'; valid settings: {', '.join(valid)}")
            changes[owner[0]][name] = value
        return type(self)(**{k: part.replace(**changes[k]) for k, part in parts.items()})


def _check_names(cls: type[Config], values: Mapping[str, Any]) -> None:
    valid = cls.field_names()
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise DetganError(
            f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid settings: {', '.join(valid)}"
        )


def _coerce(cls: type[Config], values: Mapping[str, Any]) -> dict[str, Any]:
    """Convert values read from text (JSON, ``--set``) to the field types where unambiguous."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        kind = str(types[name])
        try:
            if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = float(value)
            elif kind == "float" and isinstance(value, str):
                value = float(value)
            elif kind == "int" and isinstance(value, str):
                value = int(value)
            elif kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            elif kind == "bool" and isinstance(value, str):
                value = {"true": True, "false": False, "1": True, "0": False}[value.lower()]
        except (ValueError, KeyError):
            raise DetganError(f"setting {name}={value!r} is not a valid {kind}") from None
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise DetganError(f"setting {name}={value!r} must be an integer")
        if kind == "float" and not isinstance(value, float):
            raise DetganError(f"setting {name}={value!r} must be a number")
        if kind == "bool" and not isinstance(value, bool):
            raise DetganError(f"setting {name}={value!r} must be true or false")
        out[name] = value
    return out


def pick_preset(presets: Mapping[str, Any], name: str, what: str) -> Any:
    """Look up a named preset, with a helpful error listing the choices."""
    if name not in presets:
        raise DetganError(f"unknown {what} '{name}'; choose one of: {', '.join(presets)}")
    return presets[name]


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` (from ``--set``); values are JSON where they parse."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise DetganError(f"--set expects key=value, got '{item}'")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat mapping of settings from a JSON or TOML file."""
    path = Path(path)
    if not path.is_file():
        raise DetganError(f"config file '{path}' not found")
    try:
        text = path.read_text()  # inside: a binary file is a parse error, not a traceback
        if path.suffix == ".toml":
            import tomllib  # Python >= 3.11

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise DetganError("TOML config files need Python >= 3.11; use JSON instead") from None
    except ValueError as exc:
        raise DetganError(f"config file '{path}' cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise DetganError(f"config file '{path}' must hold a mapping of settings")
    return data
