"""Recipe configuration: YAML recipe files -> typed, frozen dataclasses.

A recipe file is a YAML mapping whose keys mirror the dataclasses in `schema`. It names the
base recipe it extends (`recipe:`, see `defaults`); unknown keys are errors that suggest the
nearest valid key, and every value's type and range is checked when the config is loaded.
`--set stages.0.epochs=3` style overrides (`overrides`) are applied to the raw mapping before
validation, so they obey the same rules. Bundled recipe files are package data (`recipes`).

Only this package and the run directory deal in dicts; everything downstream gets dataclasses.
"""

from tftune.config.coerce import from_dict, to_dict
from tftune.config.loading import config_from_dict, dump_config, load_recipe
from tftune.config.overrides import apply_overrides, parse_override
from tftune.config.schema import (
    BackboneConfig,
    DataConfig,
    EarlyStoppingConfig,
    GroupPattern,
    HeadConfig,
    RecipeConfig,
    StageConfig,
    TrainConfig,
)

__all__ = [
    "BackboneConfig", "DataConfig", "EarlyStoppingConfig", "GroupPattern", "HeadConfig",
    "RecipeConfig", "StageConfig", "TrainConfig", "apply_overrides", "config_from_dict",
    "dump_config", "from_dict", "load_recipe", "parse_override", "to_dict",
]
