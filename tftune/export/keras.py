"""`--format keras`: the model as a float32 `.keras` file (no optimizer state), with the
text preprocessor beside it; checked by loading it again. Its output is the task's
(`Task.export_model`): class or label probabilities, or a regression target's value in its
own units."""

from __future__ import annotations

from pathlib import Path

from tftune import rundir
from tftune.rundir import storage
from tftune.export.base import Calibration, Exported, Steps, model_outputs, reference
from tftune.runtime.progress import silent


class KerasExporter:
    name = "keras"

    def write(self, run, predictor, tmp: Path, inputs: list, quantize: str,
              calibration: Calibration, progress: Steps = silent) -> Exported:
        import keras

        from tftune.inference.predictor import Predictor

        artefact = tmp / rundir.MODEL_FILE
        predictor.task.export_model(predictor.model).save(str(artefact))
        preprocessor = None
        if run.modality == "text":
            import keras_hub

            storage.copy_tree(run.path / rundir.PREPROCESSOR_DIR, tmp / rundir.PREPROCESSOR_DIR)
            preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
                str(tmp / rundir.PREPROCESSOR_DIR))
        reloaded = keras.saving.load_model(str(artefact), compile=False)
        again = Predictor(reloaded, run.class_names, run.modality, run.image_size, preprocessor,
                          pairs=predictor.pairs)
        return Exported(
            artefact=artefact, converter="keras.Model.save (float32, no optimizer)",
            runtime="keras.saving.load_model",
            outputs=model_outputs(again, inputs, progress=progress("the reloaded .keras model", len(inputs))),
            reference=reference(predictor, inputs, progress=progress("the Keras model", len(inputs))),
            notes=[f"returns {predictor.task.artefact_output_doc()}"] if predictor.task.keeps_state else [],
        )
