"""A finished run directory, read back: its config, classes, model and preprocessor, and
its data splits re-created from `config.yaml`.

`evaluate`, `predict` and `export` all start here, so an incomplete or damaged run
directory gives the same one-line error everywhere.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from tftune import rundir
from tftune.rundir import storage
from tftune.config import RecipeConfig, load_recipe
from tftune.data.labelled import Examples
from tftune.errors import ConfigError, DataError, TftuneError
from tftune.tasks import TASKS

MODALITIES = {"text_classification": "text", "image_classification": "image"}
SPLITS = ("test", "val", "train")


@dataclasses.dataclass
class FinishedRun:
    """A run directory that holds everything inference needs."""

    path: Path
    config: RecipeConfig
    class_names: list[str]
    modality: str
    trained_policy: Optional[str] = None  # set by load_model: e.g. 'mixed_bfloat16'

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.config.data.image_size)

    @property
    def task(self):
        """The run's `tftune.tasks.Task`, bound to its classes and to what it kept in
        task.json (a regression target's mean and std, multi-label thresholds)."""
        from tftune.tasks import get_task

        state = None
        path = self.path / rundir.TASK_FILE
        if path.is_file():
            try:
                state = json.loads(path.read_text())
            except ValueError as e:
                raise TftuneError(f"{path} is not valid JSON ({e}). Train the run again.") from None
        return get_task(self.config.task, self.class_names, self.config, state)

    def load_model(self, merge: bool = True):
        """The trained model as a float32 Keras model, without its optimizer, with the
        adapters of LoRA stages merged into their kernels (a plain Keras model; `merge=False`
        keeps the LoRA layers, with the adapters already folded in by Keras's saving and
        zero, for comparing the merged model with it).

        A run trained under a mixed precision policy (bfloat16 / float16 compute) is
        rebuilt with float32 layers and the same weights: mixed precision is a training
        speed setting, and float32 is what every CPU runs well and what LiteRT supports.
        """
        import keras

        from tftune.model.backbones import preprocessing  # noqa: F401  (registers ImagePreprocessing)
        from tftune.model import heads  # noqa: F401  (registers tftune's layers)
        from tftune.training import optim  # noqa: F401  (registers tftune's schedules and optimizers)

        path = self.path / rundir.MODEL_FILE
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as e:  # a truncated or foreign file: keras raises many types
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TftuneError(
                f"Cannot load {path}: {first}. The file is damaged or not a tftune model; "
                f"train the run again (tftune train ... --overwrite)."
            ) from None
        mixed = {l.dtype_policy.name for l in _all_layers(model) if l.dtype_policy.name.startswith("mixed_")}
        self.trained_policy = sorted(mixed)[0] if mixed else "float32"
        from tftune.model.adapters import merge_lora

        model = float32_copy(model)
        return merge_lora(model) if merge else model  # merged: no LoRA ops or variables

    def load_preprocessor(self):
        """The KerasHub text preprocessor saved with the run (raw strings -> token dict)."""
        import keras_hub

        path = self.path / rundir.PREPROCESSOR_DIR
        try:
            with storage.local_copy(path) as local:  # KerasHub reads presets from local disk
                return keras_hub.models.TextClassifierPreprocessor.from_preset(str(local))
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TftuneError(
                f"Cannot load the text preprocessor in {path}: {first}. Train the run again "
                f"(tftune train ... --overwrite)."
            ) from None

    def split(self, name: str = "test") -> Examples:
        """One of the run's own splits, re-created from `config.yaml` (the split is seeded,
        so it holds the same examples as in training while the data files are unchanged)."""
        from tftune.data import load_data

        if name not in SPLITS:
            raise ConfigError(
                f"Unknown split {name!r}. Expected one of: {', '.join(SPLITS)}. Received: split={name!r}"
            )
        if self.config.data.source == "python":
            raise DataError(
                f"Run {self.path} trained on datasets passed from Python, so its {name} split "
                f"cannot be re-created. Pass labelled data with --data (a folder of class folders, "
                f"or a CSV / JSONL file)."
            )
        splits = load_data(self.config.data, self.config.train.seed, self.task)
        if splits.class_names != self.class_names:
            raise DataError(
                f"The data of run {self.path} now has classes {splits.class_names}, but the run "
                f"was trained on {self.class_names} (classes.json). The data changed since "
                f"training; pass the data to use with --data."
            )
        dataset = getattr(splits, name)
        if dataset is None or not splits.sizes.get(name):
            raise DataError(
                f"Run {self.path} has no {name} split (data.test_fraction is 0?). Use another "
                f"split or pass labelled data with --data."
            )
        return Examples(
            name=name,
            description=f"the run's {name} split",
            dataset=dataset,
            size=int(splits.sizes[name]),
            ids=splits.ids.get(name),
        )

    def trained_size(self, split: str) -> Optional[int]:
        """The split's size recorded in metrics.json at training time, if any."""
        try:
            metrics = json.loads((self.path / rundir.METRICS_FILE).read_text())
            return int(metrics["sizes"][split])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def open_run(path: str | Path) -> FinishedRun:
    """Checks that `path` is a complete run directory and reads its config and classes.

    Raises TftuneError naming what is missing and what to do about it.
    """
    run = storage.path(path)  # a local path or a URL (gs://, ram://)
    if not run.exists():
        raise TftuneError(f"Run directory {run} not found. Pass the runs/<name>/ folder written by `tftune train`.")
    if not run.is_dir():
        raise TftuneError(f"{run} is a file, not a run directory. Pass the runs/<name>/ folder written by `tftune train`.")
    if not (run / rundir.CONFIG_FILE).is_file():
        _not_a_run(run)
    missing = [f for f in (rundir.CONFIG_FILE, rundir.CLASSES_FILE, rundir.MODEL_FILE) if not (run / f).is_file()]
    modality = None
    if (run / rundir.CONFIG_FILE).is_file():
        config = load_recipe(run / rundir.CONFIG_FILE)
        modality = MODALITIES.get(config.recipe)
        if modality == "text" and not (run / rundir.PREPROCESSOR_DIR / "tokenizer.json").is_file():
            missing.append(f"{rundir.PREPROCESSOR_DIR}/")
        if TASKS[config.task].keeps_state and not (run / rundir.TASK_FILE).is_file():
            missing.append(rundir.TASK_FILE)
    if missing:
        why = (
            "the run did not finish (there is no metrics.json)"
            if not (run / rundir.METRICS_FILE).is_file()
            else "files were removed after the run finished"
        )
        raise TftuneError(
            f"Run directory {run} is incomplete: missing {', '.join(missing)}; {why}. Train it "
            f"again (tftune train RECIPE --overwrite) or pass a finished run directory."
        )
    try:
        class_names = json.loads((run / rundir.CLASSES_FILE).read_text())
    except ValueError as e:
        raise TftuneError(f"{run / rundir.CLASSES_FILE} is not valid JSON ({e}). Train the run again.") from None
    least = TASKS[config.task].min_classes
    if not isinstance(class_names, list) or len(class_names) < least or not all(isinstance(c, str) for c in class_names):
        raise TftuneError(
            f"{run / rundir.CLASSES_FILE} must hold a list of at least {least} class names. "
            f"Received: {str(class_names)[:80]}"
        )
    return FinishedRun(path=run, config=config, class_names=class_names, modality=modality)


def _not_a_run(folder: Path, shown: int = 5) -> None:
    """Raises TftuneError when `folder` (no config.yaml of its own) holds run directories
    (`--output DIR` puts runs in DIR/<name>/): the error names them."""
    try:
        runs = sorted(d for d in folder.iterdir() if d.is_dir() and (d / rundir.CONFIG_FILE).is_file())
    except OSError:
        return
    if not runs:
        return
    names = [str(d) + ("" if (d / rundir.METRICS_FILE).is_file() else " (unfinished)") for d in runs[:shown]]
    more = f", ... ({len(runs)} in all)" if len(runs) > shown else ""
    finished = next((d for d in runs if (d / rundir.METRICS_FILE).is_file()), runs[0])
    raise TftuneError(
        f"{folder} is not a run directory; it holds {'runs' if len(runs) > 1 else 'a run'}: "
        f"{', '.join(names)}{more}. Pass one of them, e.g. {finished} (`tftune train --output "
        f"{folder}` writes each run to {folder}/<name>/)."
    )


def _float32_config(obj):
    """A serialized Keras config with every mixed-precision dtype policy set to float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and str(obj.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_config(v) for v in obj]
    return obj


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def float32_copy(model):
    """`model` itself if it computes in float32, else a float32 rebuild with its weights."""
    import keras

    if all(not layer.dtype_policy.name.startswith("mixed_") for layer in _all_layers(model)):
        return model
    config = keras.saving.serialize_keras_object(model)
    copy = keras.saving.deserialize_keras_object(_float32_config(config))
    copy.set_weights(model.get_weights())
    return copy
