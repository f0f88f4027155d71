"""The trained model and the text preprocessor, saved into a run directory."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tftune.rundir import storage
from tftune.rundir.io import atomic_write, write_text
from tftune.rundir.layout import MODEL_FILE, PREPROCESSOR_DIR


def save_model(model, run: Path) -> Path:
    """Saves the model as `.keras`, atomically."""
    path = run / MODEL_FILE
    atomic_write(path, lambda p: model.save(str(p)))
    return path


def save_preprocessor(preprocessor, backbone_model, run: Path) -> Path:
    """Saves the KerasHub text preprocessor as a preset folder that loads on its own with
    `TextClassifierPreprocessor.from_preset(run / "preprocessor")`: KerasHub finds the model
    family through the backbone's `config.json`, written here without weights."""
    import keras

    import keras_hub

    run = storage.path(run)
    if storage.is_url(run):  # KerasHub writes presets to local disk: built there, then uploaded
        with tempfile.TemporaryDirectory(prefix="tftune-preprocessor-") as tmp:
            local = save_preprocessor(preprocessor, backbone_model, Path(tmp))
            storage.rmtree(run / PREPROCESSOR_DIR)
            storage.upload_tree(local, run / PREPROCESSOR_DIR)
        return run / PREPROCESSOR_DIR
    path = run / PREPROCESSOR_DIR
    preprocessor.save_to_preset(str(path))
    if isinstance(backbone_model, keras_hub.models.Backbone):
        config = keras.saving.serialize_keras_object(backbone_model)
    else:
        # A user's own Keras text model: the family is the preprocessor's (all `from_preset`
        # reads of config.json here is the class it names).
        family = preprocessor.backbone_cls
        config = {"module": family.__module__, "class_name": family.__name__, "config": {},
                  "registered_name": keras.saving.get_registered_name(family)}
    write_text(path / "config.json", json.dumps(config, indent=2) + "\n")
    return path
