"""YAML mappings <-> config dataclasses: types and ranges checked, unknown keys rejected with a
suggestion, then each dataclass's cross-field rules (its `check` method)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Literal, Union

from tftune.config.ranges import Range
from tftune.errors import ConfigError, did_you_mean


def _ranges(tp: Any) -> tuple[Any, list[Range]]:
    """(the type under `Annotated[...]`, the `Range`s declared on it)."""
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        return base, [e for e in extras if isinstance(e, Range)]
    return tp, []


def _type_name(tp: Any) -> str:
    """What a value of type `tp` is, in a message: 'an integer >= 1 or null', 'a list'."""
    base, ranges = _ranges(tp)
    if ranges:
        return " and ".join(r.describe(_type_name(base)) for r in ranges)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of: " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        names = [_type_name(a) for a in args]
        if len(args) < len(typing.get_args(tp)):
            names.append("null")
        return " or ".join(names)
    if origin is tuple:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


class _Invalid(ConfigError):
    """A ConfigError that knows which key it is about (so a union can tell a nested error)."""

    def __init__(self, message: str, where: str):
        super().__init__(message)
        self.where = where


def _invalid(where: str, expected: str, value: Any, hint: str = "") -> _Invalid:
    return _Invalid(f"Invalid value for '{where}'. Expected {expected}. Received: {value!r}{hint}",
                    where)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Converts a YAML value to the annotated type and checks its declared range, or raises
    ConfigError naming `where`."""
    base, ranges = _ranges(tp)
    if ranges:
        value = _coerce(value, base, where)
        if not all(value in r for r in ranges):
            raise _invalid(where, _type_name(tp), value)
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        nested = [e for e in errors if getattr(e, "where", where) != where]
        if nested:  # a key inside the value is wrong: name that key
            raise nested[0]
        raise _invalid(where, _type_name(tp), value)
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if isinstance(value, str) and value.lower() in [str(a).lower() for a in args]:
            return value.lower()
        raise _invalid(where, _type_name(tp), value, "." + did_you_mean(str(value), args))
    if origin is tuple:
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            if args and args[-1] is Ellipsis and isinstance(value, str):
                value = [value]
            else:
                raise _invalid(where, "a list", value)
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _invalid(where, f"a list of {len(args)} items", value)
        return tuple(_coerce(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _invalid(where, "a mapping", value)
        key_tp, value_tp = args
        return {
            _coerce(k, key_tp, where): _coerce(v, value_tp, f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _invalid(where, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _invalid(where, "an integer", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "5e-5" (no dot) as a string.
            except ValueError:
                pass
        raise _invalid(where, "a number", value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _invalid(where, "a string", value)
    raise TypeError(f"Unsupported config type {tp!r} at {where}")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Builds dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Invalid value for '{where or 'recipe'}'. Expected a mapping of keys. "
            f"Received: {data!r}"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            prefix = f"{where}." if where else ""
            hint = did_you_mean(key, fields, f"'{prefix}{{}}'", cutoff=0.5) or (
                f" Valid keys here: {', '.join(fields)}."
            )
            raise _Invalid(f"Unknown config key '{path}'.{hint}", path)
        kwargs[key] = _coerce(value, hints[key], path)
    config = cls(**kwargs)
    if hasattr(config, "check"):
        config.check(where)
    return config


def to_dict(config: Any) -> Any:
    """The plain-YAML form of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config
