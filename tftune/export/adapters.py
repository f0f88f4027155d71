"""`--format adapters`: a PEFT run's adapters on their own, the few-MB artefact to ship
instead of the whole model, checked by rebuilding the model from the base and them.

The folder holds `adapters.weights.npz` (the adapters, the head, and the biases /
normalization variables the stages tuned), `adapters.json` (the base: backbone spec,
weights setting, its files' sha256 or bundled asset name, and int8 quantization when the
base was quantized; the adapted layers' rank and alpha), the run's `config.yaml` (the head
and input settings a rebuild needs; `classes.json` is written beside it by `export`) and,
for text, the run's preprocessor (tokenizer) folder.

Verification: the base is loaded from the spec (its files checked against the sha256),
the adapters written here go on it (`tftune.model.adapters.rebuild`, the rebuild path of
`tftune.load(run, from_adapters=True)`), and the rebuilt model's probabilities are
compared with the run's Keras model (model.keras).
"""

from __future__ import annotations

from pathlib import Path

from tftune import rundir
from tftune.rundir import storage
from tftune.errors import TftuneError
from tftune.export.base import Calibration, Exported, Steps, reference
from tftune.runtime.progress import silent

ARTEFACT_DIR = "adapters"


class AdaptersExporter:
    name = "adapters"

    def write(self, run, predictor, tmp: Path, inputs: list, quantize: str,
              calibration: Calibration, progress: Steps = silent) -> Exported:
        from tftune.inference.predictor import Predictor
        from tftune.model import adapters, peft

        if not (run.path / peft.ADAPTERS_FILE).is_file():
            raise TftuneError(
                f"Run {run.path} has no {peft.ADAPTERS_FILE}: a run stores its adapters when "
                f"every stage is a head or PEFT stage (peft: lora, lora_bias, lora_norm, bitfit, "
                f"norm), and this one trained whole backbone groups or no PEFT stage. Export it "
                f"with --format keras, savedmodel or litert."
            )
        artefact = tmp / ARTEFACT_DIR
        artefact.mkdir()
        for name in (peft.ADAPTERS_FILE, peft.ADAPTERS_INFO, rundir.CONFIG_FILE):
            storage.copy_file(run.path / name, artefact / name)
        if run.modality == "text":
            storage.copy_tree(run.path / rundir.PREPROCESSOR_DIR, artefact / rundir.PREPROCESSOR_DIR)
        rebuilt = adapters.rebuild(run, artefact)
        again = Predictor(rebuilt, run.class_names, run.modality, run.image_size,
                          predictor.preprocessor, run.task)
        share = (artefact / peft.ADAPTERS_FILE).stat().st_size / (run.path / rundir.MODEL_FILE).stat().st_size
        return Exported(
            artefact=artefact, converter="tftune.model.adapters.save_adapters (float32 arrays, npz)",
            runtime="base from its spec + adapters (tftune.model.adapters.rebuild)",
            outputs=reference(again, inputs, progress=progress("the rebuilt model", len(inputs))),
            reference=reference(predictor, inputs, progress=progress("the Keras model", len(inputs))),
            notes=[f"the adapters file is {100 * share:.2f} % of model.keras"],
        )
