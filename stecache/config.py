"""Frozen dataclass configs, one per stage: the only place defaults live.

Each config is built by a strict `from_dict` (unknown keys are an error), serialised with `to_dict`
into cache attributes and run folders, and summarised by `fingerprint()`, a short sha256 of its
canonical JSON. Modules add their own stage config here as a `@config` dataclass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from .errors import StecacheError


class ConfigError(StecacheError, ValueError):
    """A config dict names an unknown key or a bad value."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def fingerprint(obj: Any) -> str:
    """Short sha256 of an object's canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def check_range(name: str, value: Any, lo, hi, kind: type) -> str | None:
    """Why `value` is not a finite `kind` (int, or float: any real) in [lo, hi]; None when it is."""
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if not ok or isinstance(value, bool):
        return f"{name} must be {'an integer' if kind is int else 'a number'}, not {value!r}"[:200]
    if not (lo <= value <= hi):  # NaN fails every comparison
        span = f"[{lo}, {hi}]" if kind is int else f"[{lo:g}, {hi:g}]"
        return f"{name} must be in {span}, not {value!r}"[:200]
    return None


class Config:
    """Mixin for frozen dataclass configs: strict from_dict, to_dict, fingerprint."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; known: {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(canonical_json(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
