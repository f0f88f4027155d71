"""What every export format shares: the result, the tolerances, the comparison with the
Keras model, and the `Exporter` protocol each format implements.

The artefact and the Keras model are compared in the units of `tftune.load(run).predict`,
as the run's task (`Task.compare`) says: class probabilities and top-1 agreement
(classification); per-label probabilities and the agreement of the thresholded decisions
(multilabel); values in the target's units, their differences divided by the target's std,
no agreement (regression: the tolerances below then read "in stds of the target").

Tolerances (max |difference| of a probability, minimum top-1 agreement):

| artefact | max abs diff | top-1 agreement | why |
|---|---|---|---|
| keras | 1e-5 | 1.0 | the same model, saved and loaded again |
| adapters | 1e-5 | 1.0 | the base + the adapters merged in float32 again (an int8 base: dequantized the same way) |
| savedmodel | 1e-4 | 0.98 | same float32 weights; graph vs eager, decode / tokenise inside the graph |
| litert none | 1e-4 | 0.98 | float32 LiteRT kernels round differently from TensorFlow's |
| litert float16 | 0.05 | 0.98 | weights rounded to float16 (about 3 significant digits) |
| litert dynamic | 0.5 | 0.95 | weights int8; activations quantized per batch at run time |
| litert int8 | 0.5 | 0.95 | weights and activations int8, ranges calibrated on 200 training examples |

Measured on the two recipe runs (128 test examples each), max |p diff| and top-1 agreement:
MobileNetV2 / Fashion-MNIST float16 0.018 / 100 %, dynamic 0.165 / 100 %, int8 0.30 / 99.2 %;
MiniLM / Rotten Tomatoes float16 0.0005 / 100 %, dynamic 0.044 / 100 %, and int8 0.99 / 70 %:
static int8 activations wreck this transformer (keeping DIV, LayerNorm, softmax, attention
matmuls or all dense layers in float did not help), so its int8 export fails the check and
dynamic is the compact choice for text. Quantization moves the probabilities of uncertain examples most, so for dynamic and int8
the top-1 agreement floor is the check that matters; the difference bound still catches a
broken conversion (a wrong class order or scrambled inputs give confident disagreements,
differences near 1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np

from tftune.errors import TftuneError
from tftune.runtime.progress import Progress, silent

QUANTIZATIONS = ("none", "dynamic", "float16", "int8")
TOLERANCES = {  # (max abs diff of a probability, minimum top-1 agreement); see above
    ("keras", "none"): (1e-5, 1.0),
    ("adapters", "none"): (1e-5, 1.0),
    ("savedmodel", "none"): (1e-4, 0.98),
    ("litert", "none"): (1e-4, 0.98),
    ("litert", "float16"): (0.05, 0.98),
    ("litert", "dynamic"): (0.5, 0.95),
    ("litert", "int8"): (0.5, 0.95),
}
REPRESENTATIVE_EXAMPLES = 200
VERIFY_FILE = "verification.json"

# A quantization that failed the check, and the milder ones to try instead.
_MILDER = {"int8": "dynamic or float16", "dynamic": "float16", "float16": "none"}


class ExportVerificationError(TftuneError):
    """The exported artefact does not reproduce the Keras model within the tolerance."""


def export_name(fmt: str, quantize: str = "none") -> str:
    """The folder name under RUN/export/: the format, and the quantization unless none."""
    return fmt if quantize == "none" else f"{fmt}-{quantize}"


@dataclasses.dataclass
class Exported:
    """What an `Exporter` wrote, and what it saw when it ran the artefact.

    `outputs` are the artefact's outputs on the verification inputs and `reference` the
    Keras model's predictions on the same inputs, prepared as the artefact takes them, both
    in the units of `Task.predictions` (class probabilities; regression: the target's).
    """

    artefact: Path
    converter: str
    runtime: str
    outputs: np.ndarray
    reference: np.ndarray
    notes: list[str] = dataclasses.field(default_factory=list)


# () -> (calibration inputs, where they come from); called only by formats that calibrate.
Calibration = Callable[[], tuple[list, str]]
# (what runs, how many examples) -> the `Progress` of running it over the verification inputs.
Steps = Callable[[str, int], Progress]


class Exporter(Protocol):
    """One export format: writes its artefact into `tmp` and runs it on `inputs`.

    `inputs` are prepared images (float32 `[H, W, 3]` arrays), texts, or (first, second)
    text pairs; `calibration` gives representative inputs for int8 quantization; `progress`
    gives the `Progress` of each run over the inputs (the Keras reference, the artefact).
    """

    name: str

    def write(self, run, predictor, tmp: Path, inputs: list, quantize: str,
              calibration: Calibration, progress: Steps = silent) -> Exported: ...


@dataclasses.dataclass
class ExportResult:
    """What `export` returns (also written to `verification.json` beside the artefact)."""

    out_dir: Path
    artefact: Path
    format: str
    quantize: str
    size_bytes: int
    samples: int
    data: str
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: Optional[float]  # the task's decision agreement (None: regression)
    tolerance: float
    min_top1_agreement: float
    converter: str
    runtime: str
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)
    task: str = "classification"
    compared: str = "probabilities"  # what max_abs_diff is of (`Task.compared`)
    agreement: Optional[str] = "top-1"  # what top1_agreement counts (`Task.agreement_kind`)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["artefact"] = str(self.artefact.relative_to(self.out_dir)) if self.artefact != self.out_dir else "."
        out["passed"] = True
        return out

    @property
    def _diff_name(self) -> str:
        return "max |p diff|" if self.compared == "probabilities" else f"max |diff| of {self.compared}"

    def summary(self) -> str:
        text = (f"Verified on {self.samples} examples ({self.data}) against the Keras model: "
                f"{self._diff_name} {self.max_abs_diff:.2e} (tolerance {self.tolerance:g}), mean "
                f"{self.mean_abs_diff:.2e}")
        if self.top1_agreement is None:
            return text
        agree = round(self.top1_agreement * self.samples)
        return (text + f"; {self.agreement} agreement {agree}/{self.samples} = "
                f"{self.top1_agreement:.4f} (floor {self.min_top1_agreement:g})")


def check_within_tolerance(result: ExportResult) -> None:
    """Raises ExportVerificationError when `result` is past its tolerance or agreement floor."""
    agreed = result.top1_agreement is None or result.top1_agreement >= result.min_top1_agreement
    if result.max_abs_diff <= result.tolerance and agreed:
        return
    notes = result.notes
    agreement = ("" if result.top1_agreement is None else
                 f", {result.agreement} agreement {result.top1_agreement:.3f} (required "
                 f"{result.min_top1_agreement:g})")
    raise ExportVerificationError(
        f"The {export_name(result.format, result.quantize)} export does not match the Keras "
        f"model: {result._diff_name} {result.max_abs_diff:.3g} (allowed {result.tolerance:g})"
        f"{agreement} on {result.samples} examples. Nothing was written. "
        + (f"Try --quantize {_MILDER[result.quantize]}, or pass --tolerance / --min-agreement if "
           f"this loss is acceptable." if result.quantize != "none"
           else "This is a bug; please report it with the run's versions.json.")
        + (f" (Notes: {'; '.join(notes)}.)" if notes else "")
    )


def model_outputs(predictor, inputs, batch_size: int = 32,
                  progress: Optional[Progress] = None) -> np.ndarray:
    """The predictor's model's raw outputs for prepared inputs (images), texts or text pairs;
    `progress` is advanced after each batch (and closed)."""
    out = []
    with progress or silent() as shown:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            out.append(predictor.probabilities(np.stack(chunk) if predictor.modality == "image" else chunk))
            shown.advance(len(chunk))
    return np.concatenate(out)


def reference(predictor, inputs, batch_size: int = 32,
              progress: Optional[Progress] = None) -> np.ndarray:
    """The Keras model's predictions for prepared inputs, in the units of
    `Task.predictions`: class probabilities, or a regression target's values."""
    return predictor.task.predictions(model_outputs(predictor, inputs, batch_size, progress))


def size_bytes(path: Path) -> int:
    """The size of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
