"""`evaluate`: score a finished run on its test split (or on labelled data) and write a
report into `RUN/eval/<name>/`.

Files written (the folder is built aside and moved into place whole, so a re-run replaces
only its own folder, and a failure leaves the old one as it was):

- `metrics.json`: the task's report (`Task.report`) plus what data and how many examples;
  classification: accuracy, per-class precision / recall / F1 / support / ROC-AUC, macro and
  weighted averages, top-k accuracy (more than 5 classes), log loss, confusion matrix (see
  `tftune.evaluation.metrics` for the conventions); regression: RMSE, MAE, R², Pearson,
  Spearman; multilabel: micro / macro F1, mAP, subset accuracy, Hamming loss, per label;
- the task's files (`Task.evaluation_files`): classification `confusion_matrix.csv` / `.png`,
  `errors.csv` (the most confidently wrong examples) and `errors.png` (image runs);
  regression `predicted_vs_true.png` (scatter and residual histogram) and `errors.csv`;
  multilabel `per_label.csv` and `errors.csv`;
- `report.txt`: the report printed on the terminal.

The train command's own `metrics.json` in the run directory is not touched.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from tftune import rundir
from tftune.errors import ConfigError

EVAL_DIR = "eval"


@dataclasses.dataclass
class EvaluationResult:
    """What `evaluate` returns: where it wrote, the metrics and the printed report."""

    out_dir: Path
    metrics: dict
    report: str


def evaluate(
    run_dir: str | Path,
    data: Optional[str] = None,
    *,
    split: str = "test",
    name: Optional[str] = None,
    batch_size: Optional[int] = None,
    errors: int = 20,
    text_column: Optional[str] = None,
    label_column: Optional[str] = None,
    skip_unknown_labels: bool = False,
    encoding: Optional[str] = None,
    progress: Optional[Callable[[int], None]] = None,
    on_start: Optional[Callable[[int], None]] = None,
) -> EvaluationResult:
    """Scores the run in `run_dir` and writes `run_dir/eval/<name>/`.

    Args:
        data: labelled data instead of the run's own split: a folder of class folders
            (image runs) or a CSV / JSONL file (text runs).
        split: which of the run's splits when `data` is not given: test, val or train.
        name: the report folder's name (default: the split, or the data file's name).
        batch_size: default: the run's training batch size.
        errors: how many of the most confidently wrong examples to list.
        text_column, label_column: columns of a CSV / JSONL `data` (default: the run's).
        skip_unknown_labels: leave out examples of classes the run does not know (else an
            error).
        encoding: the text encoding of a CSV / JSONL `data` (default: the run's
            data.encoding).
        progress: called with the number of examples after each batch.
        on_start: called once with the number of examples, before the first batch.
    """
    from tftune.rundir.reader import open_run

    started = time.perf_counter()
    run = open_run(run_dir)
    examples = _examples(run, data, split, text_column, label_column, skip_unknown_labels, encoding)
    name = name or examples.name
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ConfigError(
            f"Report name {name!r} must be letters, digits, '_', '-' or '.' (it names the folder "
            f"{run.path / EVAL_DIR}/<name>). Received: name={name!r}"
        )
    task, outputs, y_true = _score(run, examples, batch_size or run.config.train.batch_size,
                                   progress, on_start)
    report = {
        "run": str(run.path),
        "data": examples.description,
        "compute_dtype": "float32",
        **task.report(y_true, outputs),
        "seconds": round(time.perf_counter() - started, 1),
        "notes": _notes(run, examples, data),
    }
    scored = Scored(run.path.name, examples, run.modality, y_true, outputs, report, errors)
    out = run.path / EVAL_DIR / name
    with rundir.building_dir(out) as tmp:
        text = task.evaluation_files(tmp, scored)
        rundir.write_json(tmp / "metrics.json", report)
        rundir.write_text(tmp / "report.txt", text + f"\nFiles: {out}\n")
    return EvaluationResult(out_dir=out, metrics=report, report=text)


def _examples(run, data, split, text_column, label_column, skip_unknown_labels, encoding=None):
    """The labelled examples to score: `data` read with the run's task, or one of its splits."""
    from tftune.data.labelled import load_labelled

    if data is None:
        return run.split(split)
    return load_labelled(
        data, run.modality, run.class_names, run.image_size,
        text_column=text_column or run.config.data.text_column,
        label_column=label_column or run.config.data.label_column,
        skip_unknown_labels=skip_unknown_labels, task=run.task,
        label_columns=run.config.data.label_columns,
        label_separator=run.config.data.label_separator,
        text_columns=run.config.data.text_columns,
        encoding=encoding or run.config.data.encoding,
    )


def _score(run, examples, batch_size: int, progress, on_start):
    """(the predictor's task, model outputs, true labels) over `examples`, in float32."""
    from tftune.inference.predictor import predictor_for

    predictor = predictor_for(run)
    if on_start is not None:
        on_start(examples.size)
    outs, labels = [], []
    for x, y in examples.dataset.batch(batch_size):
        outs.append(predictor.probabilities(x))
        labels.append(np.asarray(y))
        if progress is not None:
            progress(len(labels[-1]))
    return predictor.task, np.concatenate(outs), np.concatenate(labels)


def _notes(run, examples, data) -> list[str]:
    """What a reader of the numbers should know (a changed split, float32 vs training's dtype)."""
    notes = []
    trained_size = run.trained_size(examples.name) if data is None else None
    if trained_size is not None and trained_size != examples.size:
        notes.append(
            f"the re-created {examples.name} split has {examples.size} examples but training "
            f"recorded {trained_size}: the data changed since training"
        )
    if data is None and run.trained_policy not in (None, "float32"):
        notes.append(
            f"computed in float32; the run trained and scored its own metrics.json in "
            f"{run.trained_policy}, so the last digits can differ"
        )
    return notes


@dataclasses.dataclass
class Scored:
    """What the task's `evaluation_files` draw from: the examples, the true labels and the
    model outputs (in the examples' order), the report and how many errors to list."""

    run_name: str
    examples: Any  # tftune.data.labelled.Examples
    modality: str
    y_true: np.ndarray
    outputs: np.ndarray
    report: dict
    errors: int

    def texts(self, indices) -> dict[int, str]:
        """The texts at `indices` of a text run's examples ({} for images)."""
        return _texts_at(self.examples.dataset, indices) if self.modality == "text" else {}

    def images(self, indices) -> dict[int, np.ndarray]:
        return _images_at(self.examples.dataset, indices)



def _texts_at(dataset, indices) -> dict[int, str]:
    wanted = {int(i) for i in indices}
    out = {}
    if not wanted:
        return out
    for i, (x, _) in enumerate(dataset.as_numpy_iterator()):
        if i in wanted:
            out[i] = " [SEP] ".join(t.decode("utf-8") for t in x) if isinstance(x, tuple) else x.decode("utf-8")
            if len(out) == len(wanted):
                break
    return out


def _images_at(dataset, indices) -> dict[int, np.ndarray]:
    wanted = {int(i) for i in indices}
    out = {}
    for i, (x, _) in enumerate(dataset.as_numpy_iterator()):
        if i in wanted:
            out[i] = x
            if len(out) == len(wanted):
                break
    return out


