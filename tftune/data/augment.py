"""Image augmentation from Keras 3's own preprocessing layers, named in a recipe's `data.augment`.

Each entry is a name with the layer's defaults, or a one-key mapping with parameters:

    data:
      augment:
        - flip                                  # keras.layers.RandomFlip("horizontal")
        - rotation: 0.05                        # a number sets the main parameter
        - randaugment: {num_ops: 2, factor: 0.5}
        - mixup: {alpha: 0.2}                   # soft labels for the loss

Per-image augmentations run in the order listed, on float batches in 0..255 (before the
backbone's own preprocessing); `mixup` / `cutmix` run last and mix labels too: a batch's labels
become class probabilities, which the classification loss takes as they are. With both listed,
each batch gets one of them, each with probability 1/2 (as timm does).

Randomness is a pure function of (seed, stage, epoch, batch): the pipeline hands each batch its
seed `[epoch_seed, k]`, and every random draw inside the layers is derived from it (see
`tftune.data.augmenter`). So batch k of an epoch is augmented the same way in a run that was interrupted
and resumed, and the data pipeline may run batches in parallel.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from tftune.config.ranges import Range
from tftune.errors import ConfigError, did_you_mean


@dataclasses.dataclass(frozen=True)
class Param:
    """What one parameter takes: a number in `range` (or, with `pair`, also [low, high] of
    such numbers), an integer, one of `choices`, or true / false."""

    range: Optional[str] = None
    pair: bool = True
    integer: bool = False
    choices: tuple[str, ...] = ()
    boolean: bool = False

    def check(self, value, where: str):
        if self.boolean:
            if isinstance(value, bool):
                return value
            raise ConfigError(f"Invalid value for '{where}'. Expected true or false. "
                              f"Received: {value!r}")
        if self.choices:
            if isinstance(value, str) and value.lower() in self.choices:
                return value.lower()
            raise ConfigError(f"Invalid value for '{where}'. Expected one of: "
                              f"{', '.join(self.choices)}. Received: {value!r}")
        rule = Range(self.range)
        kind = "an integer" if self.integer else "a number"
        expected = rule.describe(kind) + (f", or [low, high] of them" if self.pair else "")
        values = list(value) if isinstance(value, (list, tuple)) and self.pair else [value]
        ok = len(values) in ((1, 2) if self.pair else (1,)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            and (not self.integer or float(v).is_integer()) and v in rule for v in values)
        if len(values) == 2 and ok:
            ok = values[0] <= values[1]
        if not ok:
            shown = list(value) if isinstance(value, tuple) else value  # as the recipe wrote it
            raise ConfigError(f"Invalid value for '{where}'. Expected {expected}. "
                              f"Received: {shown!r}")
        if self.integer:  # the schema reads every number as a float
            values = [int(v) for v in values]
        return tuple(values) if isinstance(value, (list, tuple)) else values[0]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One augmentation: the Keras layer (None: tftune's own), its parameters (name -> what
    it takes) and tftune's defaults, the parameter a bare number sets, and whether it mixes
    examples (and labels)."""

    layer: Optional[str]
    params: dict
    defaults: dict
    main: str
    mixes: bool = False


_UNIT = Param("[0, 1]")
_SIGNED = Param("[-1, 1]")
_FILL = {"fill_mode": Param(choices=("reflect", "wrap", "constant", "nearest")),
         "interpolation": Param(choices=("nearest", "bilinear")),
         "fill_value": Param("[0, 255]", pair=False)}
_INTERPOLATION = {"interpolation": _FILL["interpolation"]}
KINDS: dict[str, Kind] = {
    "flip": Kind("RandomFlip", {"mode": Param(choices=("horizontal", "vertical",
                                                       "horizontal_and_vertical"))},
                 {"mode": "horizontal"}, "mode"),
    "rotation": Kind("RandomRotation", {"factor": _SIGNED, **_FILL}, {"factor": 0.05}, "factor"),
    "zoom": Kind("RandomZoom", {"height_factor": _SIGNED, "width_factor": _SIGNED, **_FILL},
                 {"height_factor": 0.1}, "height_factor"),
    "translation": Kind("RandomTranslation",
                        {"height_factor": _SIGNED, "width_factor": _SIGNED, **_FILL},
                        {"height_factor": 0.1, "width_factor": 0.1}, "height_factor"),
    "resized_crop": Kind(None, {"scale": Param("(0, 1]"), "ratio": Param("> 0")},
                         {"scale": (0.35, 1.0), "ratio": (0.75, 4 / 3)}, "scale"),
    "contrast": Kind("RandomContrast", {"factor": _UNIT}, {"factor": 0.2}, "factor"),
    "brightness": Kind("RandomBrightness", {"factor": _SIGNED}, {"factor": 0.2}, "factor"),
    "color_jitter": Kind("RandomColorJitter",
                         {"brightness_factor": _SIGNED, "contrast_factor": _UNIT,
                          "saturation_factor": _UNIT, "hue_factor": _UNIT},
                         {"brightness_factor": 0.2, "contrast_factor": 0.2,
                          "saturation_factor": (0.3, 0.7), "hue_factor": 0.05}, "brightness_factor"),
    "randaugment": Kind("RandAugment", {"num_ops": Param(">= 1", pair=False, integer=True),
                                        "factor": _UNIT, **_INTERPOLATION}, {}, "factor"),
    "augmix": Kind("AugMix", {"num_chains": Param(">= 1", pair=False, integer=True),
                              "chain_depth": Param(">= 1", integer=True), "factor": _UNIT,
                              "alpha": Param("> 0", pair=False), "all_ops": Param(boolean=True),
                              **_INTERPOLATION}, {}, "factor"),
    "mixup": Kind("MixUp", {"alpha": Param("> 0", pair=False)}, {"alpha": 0.2}, "alpha",
                  mixes=True),
    "cutmix": Kind("CutMix", {"factor": Param("> 0")}, {"factor": 1.0}, "factor", mixes=True),
}
# Layers whose pixel values matter: told the range tftune's batches are in.
VALUE_RANGE = {"RandomContrast", "RandomBrightness", "RandomColorJitter", "RandAugment", "AugMix"}


def parse(entries: Sequence[Any], where: str = "data.augment") -> list[tuple[str, dict]]:
    """`data.augment`'s entries as (name, parameters) pairs, checked: known names (with a
    suggestion), known parameters, one key per mapping. Pure Python (no Keras import)."""
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            name, params = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            name, value = next(iter(entry.items()))
            params = dict(value) if isinstance(value, dict) else {}
            if not isinstance(value, dict):
                kind = KINDS.get(str(name))
                params = {kind.main if kind else "?": value}
        else:
            raise ConfigError(
                f"Invalid value for '{where}.{i}'. Expected an augmentation name or a mapping "
                f"{{name: {{parameter: value}}}} with one name. Received: {entry!r}")
        name = str(name).lower()
        kind = KINDS.get(name)
        if kind is None:
            raise ConfigError(
                f"Unknown augmentation {name!r} in '{where}.{i}'."
                f"{did_you_mean(name, KINDS) or ''} Expected one of: {', '.join(KINDS)}.")
        unknown = [p for p in params if p not in kind.params]
        if unknown:
            raise ConfigError(
                f"Unknown parameter {unknown[0]!r} of augmentation {name!r} in '{where}.{i}'. "
                f"Expected some of: {', '.join(kind.params)}. Received: {params!r}")
        checked = {k: kind.params[k].check(v, f"{where}.{i}.{name}.{k}") for k, v in params.items()}
        out.append((name, {**kind.defaults, **checked}))
    mixers = [n for n, _ in out if KINDS[n].mixes]
    if len(mixers) != len(set(mixers)):
        raise ConfigError(f"Invalid value for '{where}': {mixers} lists a mixing augmentation "
                          f"twice. List mixup and cutmix at most once each.")
    return out


def mixes(entries: Sequence[Any]) -> bool:
    """Whether `data.augment` mixes examples (mixup / cutmix), so labels become soft."""
    return any(KINDS[name].mixes for name, _ in parse(entries))


def check_augmentations(cfg, modality: str, task) -> None:
    """Refuses augmentation a run cannot take, naming the key: any for text data, and mixing
    (mixup / cutmix) for a task without class labels to mix. `data.augment` and every stage's
    own `augment` are checked, so a mistake in stage 3 is found before stage 1 trains."""
    lists = [(f"stages.{i}.augment", s.augment) for i, s in enumerate(cfg.stages)
             if s.augment is not None] + [("data.augment", cfg.data.augment)]
    for key, augment in lists:
        if augment and modality == "text":
            raise ConfigError(
                f"Invalid value for '{key}': {list(augment)!r} are image augmentations and this "
                f"recipe's data is text. Remove {key}.")
        if mixes(augment) and not task.mixable:
            raise ConfigError(
                f"Invalid value for '{key}': mixup and cutmix mix class labels, and task "
                f"{task.name!r} has none to mix. Remove them (task: classification takes them).")
