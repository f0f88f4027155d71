"""`--set KEY=VALUE` overrides: dotted keys with list indices, YAML values."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tftune.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """Splits `stages.0.epochs=3` into (['stages', '0', 'epochs'], 3); values are YAML."""
    if "=" not in text:
        raise ConfigError(
            f"Invalid override {text!r}. Expected KEY=VALUE, e.g. stages.0.epochs=3."
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"Invalid override {text!r}: the key is empty.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Returns a copy of `data` with each `KEY=VALUE` override set (lists indexed by number)."""
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"Invalid override {text!r}: '{'.'.join(parts[: i + 1])}' is not an "
                        f"index of a list of {len(node)} items."
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(
                    f"Invalid override {text!r}: '{'.'.join(parts[:i])}' is not a mapping."
                )
    return data
