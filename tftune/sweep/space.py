"""A sweep's search space: recipe keys and the distributions their values are drawn from.

One syntax, on the command line (`--param KEY=SPEC`) and in a sweep file (`params: {KEY: SPEC}`):

    stages.1.learning_rate=loguniform(1e-5, 3e-4)   # a float, log-uniform in [low, high]
    stages.1.layer_decay=uniform(0.6, 1.0)          # a float, uniform in [low, high]
    stages.1.epochs=int(1, 4)                        # an integer in [low, high]
    train.average=choice(none, ema, greedy)          # one of the listed values (YAML values)

Keys are the recipe's dotted keys, as `--set` takes them; every value a parameter can take is
checked against the recipe's schema before any trial runs.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import yaml

from tftune.errors import ConfigError

KINDS = ("uniform", "loguniform", "int", "choice")
_SPEC = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.S)


@dataclasses.dataclass(frozen=True)
class Param:
    key: str
    kind: str  # one of KINDS
    values: tuple  # (low, high) or the choices

    def suggest(self, trial) -> Any:
        """The value for this trial (an `optuna.Trial`; a resumed trial gets its stored one)."""
        if self.kind == "choice":
            if all(v is None or isinstance(v, (bool, int, float, str)) for v in self.values):
                return trial.suggest_categorical(self.key, list(self.values))
            # Optuna's choices are scalars: lists and mappings go through their YAML text.
            text = trial.suggest_categorical(self.key, [yaml_value(v) for v in self.values])
            return yaml.safe_load(text)
        if self.kind == "int":
            return trial.suggest_int(self.key, *self.values)
        return trial.suggest_float(self.key, *self.values, log=self.kind == "loguniform")

    def describe(self) -> str:
        return f"{self.key}={self.kind}({', '.join(map(str, self.values))})"


def yaml_value(value: Any) -> str:
    """`value` as `--set KEY=VALUE` takes it."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").strip()  # a scalar's document-end marker


def parse_param(key: str, spec: Any, where: str = "params") -> Param:
    """One parameter from its key and spec string (e.g. "loguniform(1e-5, 3e-4)")."""
    here = f"{where}.{key}"
    match = _SPEC.match(str(spec)) if isinstance(spec, str) else None
    if not key or match is None:
        raise ConfigError(
            f"Invalid search space for '{here}'. Expected uniform(LOW, HIGH), "
            f"loguniform(LOW, HIGH), int(LOW, HIGH) or choice(A, B, ...). Received: {spec!r}")
    kind, inner = match.group(1), match.group(2)
    if kind not in KINDS:
        from tftune.errors import did_you_mean

        raise ConfigError(f"Unknown distribution {kind!r} for '{here}'.{did_you_mean(kind, KINDS)} "
                          f"Expected one of: {', '.join(KINDS)}.")
    try:
        values = yaml.safe_load(f"[{inner}]")
    except yaml.YAMLError:
        values = None
    if not isinstance(values, list) or not values:
        raise ConfigError(f"Invalid values for '{here}': {inner!r}. Expected a comma-separated "
                          f"list, e.g. {kind}(1, 4).")
    if kind == "choice":
        if len(values) < 2 or len({yaml_value(v) for v in values}) != len(values):
            raise ConfigError(f"Invalid values for '{here}': choice needs two or more distinct "
                              f"values. Received: {values}")
        return Param(key, kind, tuple(values))
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise ConfigError(f"Invalid values for '{here}': {kind} takes two numbers, LOW and "
                          f"HIGH. Received: {values}")
    low, high = (_as_int(v, here) if kind == "int" else float(v) for v in values)
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ConfigError(f"Invalid values for '{here}': expected LOW < HIGH"
                          f"{' and LOW > 0' if kind == 'loguniform' else ''}. "
                          f"Received: {values}")
    return Param(key, kind, (low, high))


def _is_number(v) -> bool:
    try:
        float(v)
        return not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


def _as_int(v, where: str) -> int:
    f = float(v)
    if not f.is_integer():
        raise ConfigError(f"Invalid values for '{where}': int takes integer bounds. Received: {v!r}")
    return int(f)


def parse_params(entries: Sequence[str] = (), mapping: dict | None = None) -> list[Param]:
    """`--param KEY=SPEC` entries and a sweep file's `params` mapping, in that order (a key
    given twice keeps the command line's)."""
    params: dict[str, Param] = {}
    for key, spec in (mapping or {}).items():
        params[str(key)] = parse_param(str(key), spec)
    for entry in entries:
        key, sep, spec = entry.partition("=")
        if not sep:
            raise ConfigError(f"Invalid --param {entry!r}. Expected KEY=SPEC, e.g. "
                              f"stages.1.learning_rate=loguniform(1e-5, 3e-4).")
        params[key.strip()] = parse_param(key.strip(), spec, "--param")
    if not params:
        raise ConfigError("A sweep needs a search space: pass --param KEY=SPEC (e.g. "
                          "--param 'stages.1.learning_rate=loguniform(1e-5, 3e-4)') or a sweep "
                          "file with params.")
    return list(params.values())


def check_params(recipe_path, overrides: Sequence[str], params: Sequence[Param]) -> None:
    """Loads the recipe with each parameter at each of its extremes, so an unknown key or a
    value out of the key's range fails now, naming the key, and not in trial 5."""
    from tftune.config import load_recipe

    for p in params:
        for value in p.values:  # both bounds, or every choice
            load_recipe(recipe_path, tuple(overrides) + (f"{p.key}={yaml_value(value)}",))
