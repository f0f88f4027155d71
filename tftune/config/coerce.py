"""YAML mappings <-> config dataclasses: types checked, unknown keys rejected with a suggestion."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from tftune.errors import ConfigError, did_you_mean


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Converts a YAML value to the annotated type, or raises ConfigError naming `where`."""
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
        raise ConfigError(
            f"Invalid value for '{where}'. Expected {_type_name(tp)}. Received: {value!r}"
        )
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if isinstance(value, str) and value.lower() in [str(a).lower() for a in args]:
            return value.lower()
        hint = did_you_mean(str(value), args)
        raise ConfigError(
            f"Invalid value for '{where}'. Expected one of: "
            f"{', '.join(repr(a) for a in args)}. Received: {value!r}.{hint}"
        )
    if origin is tuple:
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            if args and args[-1] is Ellipsis and isinstance(value, str):
                value = [value]
            else:
                raise ConfigError(
                    f"Invalid value for '{where}'. Expected a list. Received: {value!r}"
                )
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"Invalid value for '{where}'. Expected a list of {len(args)} items. "
                f"Received: {value!r}"
            )
        return tuple(_coerce(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(
                f"Invalid value for '{where}'. Expected a mapping. Received: {value!r}"
            )
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
        raise ConfigError(f"Invalid value for '{where}'. Expected true or false. Received: {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"Invalid value for '{where}'. Expected an integer. Received: {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "5e-5" (no dot) as a string.
            except ValueError:
                pass
        raise ConfigError(f"Invalid value for '{where}'. Expected a number. Received: {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"Invalid value for '{where}'. Expected a string. Received: {value!r}")
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
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            prefix = f"{where}." if where else ""
            hint = did_you_mean(key, fields, f"'{prefix}{{}}'", cutoff=0.5) or (
                f" Valid keys here: {', '.join(fields)}."
            )
            raise ConfigError(f"Unknown config key '{path}'.{hint}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(config: Any) -> Any:
    """The plain-YAML form of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config
