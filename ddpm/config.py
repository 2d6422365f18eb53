"""Plain-data configs that round-trip through JSON (the role of diffusers' ConfigMixin, in ten lines)."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar


class ConfigMixin:
    """For frozen dataclasses: ``to_dict`` for config.json, ``from_dict`` that names unknown keys."""

    config_name: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise KeyError(f"unknown {cls.config_name} config keys {sorted(unknown)}; known keys are {sorted(known)}")
        return cls(**d)
