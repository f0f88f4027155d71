"""`export`: a finished run as a `.keras` file, a SavedModel for TF Serving, or a LiteRT
(TFLite) model, each checked against the Keras model before it is put in place.

Every export runs N examples of the run's test split (or `--data`) through the Keras model
and through the exported artefact, and compares them as the run's task says
(`Task.compare`): the largest absolute difference between the class probabilities and the
share of examples whose top class agrees (classification); the per-label probabilities and
the agreement of the thresholded decisions (multilabel); the values in the target's units,
their difference divided by the target's std (regression). Past the tolerance for the format
and quantization (`TOLERANCES`; the table and its reasons are in `tftune.export.base`) the
export fails and nothing is written.

What each task's artefacts return (their last step is the task's: `Task.export_model`,
`Task.serving_outputs`): the SavedModel `probabilities` and `label` (classification),
`probabilities` and `predicted` (multilabel: `probabilities >= thresholds`, the thresholds
kept in the run), `value` (regression, in the target's units); the `.keras` and LiteRT
models the probabilities, or the value in the target's units. A text-pair run's SavedModel
takes two string tensors, `text_a` (the first of `data.text_columns`) and `text_b`, packed
`[CLS] a [SEP] b [SEP]` by the run's KerasHub preprocessor as in training.

One module per format (`keras`, `savedmodel`, `litert`), registered by name in `registry`;
this module checks the options, picks the examples, and verifies and places what the
format's exporter wrote.

Layout: `RUN/export/<format>[-<quantization>]/` (or `--output`), never replaced without
`overwrite`; built in a temporary folder beside it and moved into place after verification.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable, Optional

from tftune import rundir
from tftune.rundir import storage
from tftune.errors import ConfigError, TftuneError
from tftune.export.base import (
    QUANTIZATIONS,
    TOLERANCES,
    VERIFY_FILE,
    Exported,
    ExportResult,
    ExportVerificationError,
    check_within_tolerance,
    export_name,
    human_size,
    size_bytes,
)
from tftune.export.examples import calibration_inputs, labelled_examples, take_inputs
from tftune.export.litert import litert_interpreter, run_litert
from tftune.export.registry import EXPORTERS, FORMATS
from tftune.export.savedmodel import (
    PAIR_INPUTS,
    call_savedmodel_in_fresh_process,
    serve_in_fresh_process,
    serving_module,
)
from tftune.runtime.progress import Progress

__all__ = [
    "export", "ExportResult", "ExportVerificationError", "EXPORTERS", "FORMATS", "QUANTIZATIONS",
    "TOLERANCES", "PAIR_INPUTS", "export_name", "serving_module", "serve_in_fresh_process",
    "call_savedmodel_in_fresh_process", "litert_interpreter", "run_litert",
]


def export(
    run_dir: str | Path,
    format: str = "savedmodel",
    quantize: str = "none",
    *,
    output: Optional[str | Path] = None,
    overwrite: bool = False,
    samples: int = 128,
    data: Optional[str] = None,
    tolerance: Optional[float] = None,
    min_agreement: Optional[float] = None,
    text_column: Optional[str] = None,
    label_column: Optional[str] = None,
    encoding: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> ExportResult:
    """Exports the finished run in `run_dir` and verifies the artefact against Keras.

    Args:
        format: keras | savedmodel | litert.
        quantize: none | dynamic | float16 | int8 (litert only).
        output: the export folder (default `run_dir/export/<format>[-<quantize>]`).
        overwrite: replace an existing export folder.
        samples: how many examples to verify with (from the run's test split, or `data`).
        data: labelled examples to verify with (and, for int8, to calibrate with) instead of
            the run's own splits: a folder of class folders or a CSV / JSONL file.
        tolerance, min_agreement: override the format's limits (see `TOLERANCES`).
        text_column, label_column: columns of a CSV / JSONL `data` (default: the run's; a
            text-pair run reads its own two `data.text_columns`).
        encoding: the text encoding of a CSV / JSONL `data` (default: the run's data.encoding).
    """
    from tftune.inference.predictor import predictor_for
    from tftune.rundir.reader import open_run

    tol, floor = _limits(format, quantize, samples, tolerance, min_agreement)
    run = open_run(run_dir)
    pairs = run.config.data.text_columns
    if pairs and text_column is not None:
        raise ConfigError(
            f"--text-column applies to runs on one text; this text-pair run reads the columns "
            f"{pairs[0]!r} and {pairs[1]!r} (its data.text_columns) of --data. Received: "
            f"--text-column {text_column!r}"
        )
    dest = storage.path(output) if output else run.path / "export" / export_name(format, quantize)
    if dest.exists() and not overwrite:
        raise TftuneError(
            f"Export folder {dest} already exists. Pass --overwrite to replace it, or choose "
            f"another --output."
        )
    started = time.perf_counter()
    predictor = predictor_for(run)
    columns = (text_column or run.config.data.text_column, label_column or run.config.data.label_column)
    examples = labelled_examples(run, data, "test", columns, encoding)
    inputs = take_inputs(examples, samples)
    echo(f"Exporting {run.path.name} as {export_name(format, quantize)} "
         f"(verifying on {len(inputs)} examples from {examples.description})")
    if storage.is_url(dest):  # another process cannot see e.g. ram://: build and verify locally
        how = " (a SavedModel in a fresh process)" if format == "savedmodel" else ""
        echo(f"   {dest} is not on local disk: the export is built and verified{how} in a "
             f"local temporary folder, then uploaded with its {storage.MANIFEST}")

    with rundir.building_dir(dest) as tmp:
        rundir.write_json(tmp / rundir.CLASSES_FILE, run.class_names)
        if predictor.task.keeps_state:  # the target's mean and std, the labels' thresholds
            rundir.write_json(tmp / rundir.TASK_FILE, {"task": predictor.task.name,
                                                       **predictor.task.state()})
        notes: list[str] = []
        if run.trained_policy not in (None, "float32"):
            notes.append(f"the run trained in {run.trained_policy}; the export and its Keras "
                         f"reference compute in float32")
        exported = EXPORTERS[format].write(run, predictor, tmp, inputs, quantize,
                                           functools.partial(calibration_inputs, run, data, columns,
                                                             encoding=encoding),
                                           progress=functools.partial(_verifying, echo))
        result = _result(exported, predictor.task, tmp, dest, format, quantize,
                         examples.description, tol, floor, started, notes + exported.notes)
        check_within_tolerance(result)
        rundir.write_json(tmp / VERIFY_FILE, result.to_json())
    echo(f"Wrote {result.artefact} ({human_size(result.size_bytes)})")
    echo(result.summary())
    return result


def _verifying(echo: Callable[[str], None], what: str, total: int) -> Progress:
    """The progress of running `what` over the `total` verification examples: a live line on
    a terminal, a line every few seconds in a log (`tftune.runtime.progress`)."""
    return Progress(f"   verifying: {what}", total, "examples", echo=echo)


def _limits(format: str, quantize: str, samples: int, tolerance: Optional[float],
            min_agreement: Optional[float]) -> tuple[float, float]:
    """Checks the options; returns (tolerance, minimum top-1 agreement) for the export."""
    _check_choice(format, FORMATS, "format")
    _check_choice(quantize, QUANTIZATIONS, "quantize")
    if (format, quantize) not in TOLERANCES:
        takes = " or ".join(f"--format {f}" for f, q in TOLERANCES if q == quantize)
        raise ConfigError(
            f"--quantize {quantize} applies to {takes} only; a {format} export keeps the "
            f"float32 weights. Use {takes} --quantize {quantize}, or drop --quantize."
        )
    if samples < 1:
        raise ConfigError(f"samples must be at least 1. Received: samples={samples}")
    default_tol, default_agree = TOLERANCES[(format, quantize)]
    tol = default_tol if tolerance is None else float(tolerance)
    floor = default_agree if min_agreement is None else float(min_agreement)
    if tol < 0 or not 0.0 <= floor <= 1.0:
        raise ConfigError(
            f"tolerance must be >= 0 and min_agreement within 0..1. Received: tolerance={tol}, "
            f"min_agreement={floor}"
        )
    return tol, floor


def _check_choice(value: str, choices, option: str) -> None:
    if value not in choices:
        from tftune.errors import did_you_mean

        raise ConfigError(
            f"Unknown {option} {value!r}.{did_you_mean(value, choices)} Expected one of: "
            f"{', '.join(choices)}. Received: {option}={value!r}"
        )


def _result(exported: Exported, task, tmp: Path, dest: Path, format: str, quantize: str,
            data: str, tol: float, floor: float, started: float, notes: list[str]) -> ExportResult:
    """The comparison of what the exporter saw with the Keras model (as the run's `task`
    compares them), as it will be placed."""
    diff = task.compare(exported.reference, exported.outputs)
    return ExportResult(
        out_dir=dest, artefact=dest / exported.artefact.relative_to(tmp), format=format,
        quantize=quantize, size_bytes=size_bytes(exported.artefact), samples=len(exported.outputs),
        data=data, max_abs_diff=diff["max_abs_diff"], mean_abs_diff=diff["mean_abs_diff"],
        top1_agreement=diff["agreement"], tolerance=tol, min_top1_agreement=floor,
        converter=exported.converter, runtime=exported.runtime,
        seconds=round(time.perf_counter() - started, 1), notes=notes, task=task.name,
        compared=task.compared, agreement=task.agreement_kind,
    )
