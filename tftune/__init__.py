"""tftune: staged transfer learning for Keras 3 / TensorFlow.

`tftune.train(recipe)` trains a recipe and returns its run; `tftune.load(run_dir)` gives a
finished run's predictor. Importing tftune does not import TensorFlow (each function imports
it on first use).
"""

__version__ = "0.1.0"


def train(config, **kwargs):
    """Trains a recipe (a `RecipeConfig`, a recipe file's path, or a bundled recipe's name)
    and writes its run directory; returns the `RunResult` (run_dir, metrics, model,
    class_names). Keyword arguments: see `tftune.training.runner.train` (`overrides`,
    `datasets`, `backbone_model`, `output_dir`, `overwrite`, `resume`, `echo`, `callbacks`:
    Keras callbacks added to every stage)."""
    from pathlib import Path

    from tftune.training.runner import train as _train

    if isinstance(config, (str, Path)) and not Path(config).expanduser().is_file():
        from tftune.config.recipes import find_recipe

        config = find_recipe(str(config))
    return _train(config, **kwargs)


def load(run_dir, from_adapters: bool = False):
    """The predictor of a finished run directory: `tftune.load("runs/x").predict(inputs)`
    (see `tftune.inference.predictor.Predictor`). `from_adapters=True` rebuilds a PEFT run's
    model from its base and its adapters file instead of loading model.keras."""
    from tftune.inference.predictor import load as _load

    return _load(run_dir, from_adapters)


__all__ = ["load", "train", "__version__"]
