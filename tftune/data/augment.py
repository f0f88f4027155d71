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

from tftune.errors import ConfigError, did_you_mean


@dataclasses.dataclass(frozen=True)
class Kind:
    """One augmentation: the Keras layer (None: tftune's own), its parameters and defaults,
    the parameter a bare number sets, and whether it mixes examples (and labels)."""

    layer: Optional[str]
    params: tuple[str, ...]
    defaults: dict
    main: str
    mixes: bool = False


_FILL = ("fill_mode", "interpolation", "fill_value")
KINDS: dict[str, Kind] = {
    "flip": Kind("RandomFlip", ("mode",), {"mode": "horizontal"}, "mode"),
    "rotation": Kind("RandomRotation", ("factor", *_FILL), {"factor": 0.05}, "factor"),
    "zoom": Kind("RandomZoom", ("height_factor", "width_factor", *_FILL),
                 {"height_factor": 0.1}, "height_factor"),
    "translation": Kind("RandomTranslation", ("height_factor", "width_factor", *_FILL),
                        {"height_factor": 0.1, "width_factor": 0.1}, "height_factor"),
    "resized_crop": Kind(None, ("scale", "ratio"), {"scale": (0.35, 1.0), "ratio": (0.75, 4 / 3)},
                         "scale"),
    "contrast": Kind("RandomContrast", ("factor",), {"factor": 0.2}, "factor"),
    "brightness": Kind("RandomBrightness", ("factor",), {"factor": 0.2}, "factor"),
    "color_jitter": Kind("RandomColorJitter",
                         ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor"),
                         {"brightness_factor": 0.2, "contrast_factor": 0.2,
                          "saturation_factor": (0.3, 0.7), "hue_factor": 0.05}, "brightness_factor"),
    "randaugment": Kind("RandAugment", ("num_ops", "factor", "interpolation"), {}, "factor"),
    "augmix": Kind("AugMix", ("num_chains", "chain_depth", "factor", "alpha", "all_ops",
                              "interpolation"), {}, "factor"),
    "mixup": Kind("MixUp", ("alpha",), {"alpha": 0.2}, "alpha", mixes=True),
    "cutmix": Kind("CutMix", ("factor",), {"factor": 1.0}, "factor", mixes=True),
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
        out.append((name, {**kind.defaults, **{k: _plain(v) for k, v in params.items()}}))
    mixers = [n for n, _ in out if KINDS[n].mixes]
    if len(mixers) != len(set(mixers)):
        raise ConfigError(f"Invalid value for '{where}': {mixers} lists a mixing augmentation "
                          f"twice. List mixup and cutmix at most once each.")
    return out


def _plain(value):
    return tuple(value) if isinstance(value, list) else value


def mixes(entries: Sequence[Any]) -> bool:
    """Whether `data.augment` mixes examples (mixup / cutmix), so labels become soft."""
    return any(KINDS[name].mixes for name, _ in parse(entries))
