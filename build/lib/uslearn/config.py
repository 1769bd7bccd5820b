"""Typed configuration: frozen dataclasses built from flat ``key=value`` dicts.

Flat dicts are what MLflow params and Ray Tune search spaces are, so a config crosses those
boundaries without a translation layer: ``dataclasses.asdict`` of a run's configs gives its
MLflow params; ``from_flat(Cls, d)`` / ``split_flat(d, *classes)`` rebuild the configs from the
dict a Tune trial receives. Unknown keys and wrongly typed values raise at construction (fail
loudly), naming the key and what was expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from uslearn.errors import UserError

T = TypeVar("T")
Scalar = bool | int | float | str


class ConfigError(UserError, ValueError):
    """A configuration key or value that the receiving dataclass does not accept."""


def field_names(cls: type) -> tuple[str, ...]:
    """Return the field names of dataclass ``cls`` in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def _non_finite(value: Any) -> bool:
    """Return True for a number or numeric string that is nan or infinite."""
    try:
        return not isinstance(value, bool) and not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def finite_float(text: str) -> float:
    """Return ``text`` as a float: the argparse ``type`` of every numeric flag that takes one.

    Raises:
        argparse.ArgumentTypeError: ``nan``, ``inf`` or a number out of float range (argparse
            turns it into one usage line, exit 2); nan would pass every range check after.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: expected a finite number")
    return value


def _coerce(cls_name: str, key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to the field's scalar type, or raise ConfigError."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "str": str, "bool": bool}.get(
            annotation, annotation
        )
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        annotation = options[0]
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{cls_name}.{key}={value!r}: expected one of {list(allowed)}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif annotation is int:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            return value
        elif isinstance(value, float) and value.is_integer():
            return int(value)
        elif isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif annotation is float:
        if _non_finite(value):  # nan passes every range check and inf overflows later
            raise ConfigError(f"{cls_name}.{key}={value!r}: expected a finite number")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, (str, Path)):
            return str(value)
    else:
        return value
    raise ConfigError(
        f"{cls_name}.{key}={value!r}: expected {getattr(annotation, '__name__', annotation)}"
    )


def from_flat(cls: type[T], flat: dict[str, Any], *, ignore_unknown: bool = False) -> T:
    """Return ``cls(**flat)`` with values coerced to the field types.

    Args:
        cls: a dataclass type.
        flat: keys are field names; values scalars (or strings to parse, e.g. from a CLI).
        ignore_unknown: take only the keys ``cls`` has (for splitting one flat dict over several
            configs); otherwise an unknown key raises.

    Raises:
        ConfigError: unknown key (listing the accepted ones) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    unknown = sorted(set(flat) - set(names))
    if unknown and not ignore_unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; accepted: {list(names)}")
    kwargs = {k: _coerce(cls.__name__, k, v, hints[k]) for k, v in flat.items() if k in names}
    return cls(**kwargs)


def split_flat(flat: dict[str, Any], *classes: type) -> tuple:
    """Return one instance per class from a single flat dict; keys no class accepts raise."""
    accepted = {name for cls in classes for name in field_names(cls)}
    unknown = sorted(set(flat) - accepted)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; accepted: {sorted(accepted)}")
    return tuple(from_flat(cls, flat, ignore_unknown=True) for cls in classes)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Return the flat mapping stored in a YAML file (a top-level mapping of scalars).

    Raises:
        ConfigError: a missing or unreadable file, or YAML that does not parse (with its line).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
    return data
