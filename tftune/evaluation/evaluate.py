"""`evaluate`: score a finished run on its test split (or on labelled data) and write a
report into `RUN/eval/<name>/`.

Files written (the folder is built aside and moved into place whole, so a re-run replaces
only its own folder, and a failure leaves the old one as it was):

- `metrics.json`: accuracy, per-class precision / recall / F1 / support / ROC-AUC, macro and
  weighted averages, top-k accuracy (more than 5 classes), log loss, confusion matrix (see
  `tftune.evaluation.metrics` for the conventions), plus what data and how many examples;
- `confusion_matrix.csv` and `confusion_matrix.png`;
- `errors.csv`: the most confidently wrong examples, most confident first;
- `errors.png` (image runs): those images with their true and predicted labels;
- `report.txt`: the report printed on the terminal.

The train command's own `metrics.json` in the run directory is not touched.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tftune.evaluation import plots
from tftune import rundir
from tftune.errors import ConfigError

EVAL_DIR = "eval"
ERROR_IMAGES = 16


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
        progress: called with the number of examples after each batch.
        on_start: called once with the number of examples, before the first batch.
    """
    from tftune.rundir.reader import open_run

    started = time.perf_counter()
    run = open_run(run_dir)
    examples = _examples(run, data, split, text_column, label_column, skip_unknown_labels)
    name = name or examples.name
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ConfigError(
            f"Report name {name!r} must be letters, digits, '_', '-' or '.' (it names the folder "
            f"{run.path / EVAL_DIR}/<name>). Received: name={name!r}"
        )
    probabilities, y_true = _score(run, examples, batch_size or run.config.train.batch_size,
                                   progress, on_start)
    report = {
        "run": str(run.path),
        "data": examples.description,
        "compute_dtype": "float32",
        **run.task.report(y_true, probabilities),
        "seconds": round(time.perf_counter() - started, 1),
        "notes": _notes(run, examples, data),
    }
    wrong = np.flatnonzero(np.argmax(probabilities, axis=1) != y_true)
    error_rows = _error_rows(run, examples, probabilities, y_true, wrong, errors)
    text = format_report(run.path.name, examples, report, error_rows, len(wrong))
    out = run.path / EVAL_DIR / name
    with rundir.building_dir(out) as tmp:
        _write_report(run, examples, report, error_rows, len(wrong), tmp)
        rundir.write_text(tmp / "report.txt", text + f"\nFiles: {out}\n")
    return EvaluationResult(out_dir=out, metrics=report, report=text)


def _examples(run, data, split, text_column, label_column, skip_unknown_labels):
    """The labelled examples to score: `data` mapped onto the run's classes, or a split."""
    from tftune.data.labelled import load_labelled

    if data is None:
        return run.split(split)
    return load_labelled(
        data, run.modality, run.class_names, run.image_size,
        text_column=text_column or run.config.data.text_column,
        label_column=label_column or run.config.data.label_column,
        skip_unknown_labels=skip_unknown_labels,
    )


def _score(run, examples, batch_size: int, progress, on_start):
    """(model outputs, true labels) over `examples`, batch by batch, in float32."""
    from tftune.inference.predictor import predictor_for

    predictor = predictor_for(run)
    if on_start is not None:
        on_start(examples.size)
    outputs, labels = [], []
    for x, y in examples.dataset.batch(batch_size):
        outputs.append(predictor.probabilities(x))
        labels.append(np.asarray(y))
        if progress is not None:
            progress(len(labels[-1]))
    return np.concatenate(outputs), np.concatenate(labels).astype(np.int64)


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


def _error_rows(run, examples, probabilities, y_true, wrong, limit: int) -> list[dict]:
    """The `limit` most confidently wrong examples, most confident first."""
    confidence = probabilities[wrong, np.argmax(probabilities[wrong], axis=1)]
    worst = wrong[np.argsort(-confidence, kind="mergesort")][:limit]
    texts = _texts_at(examples.dataset, worst) if run.modality == "text" else {}
    rows = []
    for rank, i in enumerate(worst, 1):
        pred = int(np.argmax(probabilities[i]))
        rows.append({
            "rank": rank,
            "index": int(i),
            "id": examples.ids[i] if examples.ids else "",
            **({"text": texts[int(i)]} if run.modality == "text" else {}),
            "true": run.class_names[y_true[i]],
            "predicted": run.class_names[pred],
            "confidence": round(float(probabilities[i, pred]), 6),
            "p_true": round(float(probabilities[i, y_true[i]]), 6),
        })
    return rows


def _write_report(run, examples, report: dict, error_rows: list[dict], n_wrong: int, tmp: Path):
    """metrics.json, the confusion matrix (CSV, PNG), errors.csv and, for images, errors.png."""
    rundir.write_json(tmp / "metrics.json", report)
    _write_confusion_csv(tmp / "confusion_matrix.csv", report["confusion_matrix"], run.class_names)
    plots.confusion_matrix(
        np.asarray(report["confusion_matrix"]), run.class_names, tmp / "confusion_matrix.png",
        title=f"{run.path.name} on {examples.description} (accuracy {report['accuracy']:.4f})",
    )
    _write_errors_csv(tmp / "errors.csv", error_rows)
    if run.modality == "image" and error_rows:
        rows = error_rows[:ERROR_IMAGES]
        images = _images_at(examples.dataset, [r["index"] for r in rows])
        plots.image_grid(
            [images[r["index"]] for r in rows],
            [f"{r['id'].split('/')[-1] or '#' + str(r['index'])}\ntrue {r['true']}, "
             f"predicted {r['predicted']} ({r['confidence']:.2f})" for r in rows],
            tmp / "errors.png",
            title=f"Most confidently wrong ({len(rows)} of {n_wrong} errors)",
        )


def _texts_at(dataset, indices) -> dict[int, str]:
    wanted = {int(i) for i in indices}
    out = {}
    if not wanted:
        return out
    for i, (x, _) in enumerate(dataset.as_numpy_iterator()):
        if i in wanted:
            out[i] = x.decode("utf-8")
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


def _write_confusion_csv(path: Path, cm, class_names) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, cm):
        writer.writerow([name, *row])
    rundir.write_text(path, buf.getvalue())


def _write_errors_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(rows[0]) if rows else ["rank", "index", "id", "true", "predicted", "confidence", "p_true"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    rundir.write_text(path, buf.getvalue())


def _fmt(value) -> str:
    return "   n/a" if value is None else f"{value:.4f}"


def format_report(run_name: str, examples, report: dict, error_rows: list[dict], n_wrong: int,
                  shown_errors: int = 5) -> str:
    """The compact text report `tftune evaluate` prints."""
    lines = [
        f"Run {run_name} on {examples.description}: {report['examples']} examples",
        f"accuracy {report['accuracy']:.4f}   macro F1 {report['macro_avg']['f1']:.4f}   "
        f"weighted F1 {report['weighted_avg']['f1']:.4f}   ROC-AUC {_fmt(report['roc_auc'])} "
        f"({report['roc_auc_kind']})   log loss {report['log_loss']:.4f}",
    ]
    if "top_k_accuracy" in report:
        lines.append("   ".join(f"top-{k} accuracy {v:.4f}" for k, v in report["top_k_accuracy"].items()))
    names = list(report["per_class"])
    width = max(12, max(len(n) for n in names) + 1)
    lines.append(f"{'class':<{width}} precision  recall      f1  support  ROC-AUC")
    for n, m in report["per_class"].items():
        lines.append(f"{n:<{width}}    {m['precision']:.4f}  {m['recall']:.4f}  {m['f1']:.4f}  "
                     f"{m['support']:>7}   {_fmt(m['roc_auc'])}")
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        m = report[key]
        lines.append(f"{label:<{width}}    {m['precision']:.4f}  {m['recall']:.4f}  {m['f1']:.4f}")
    cm = report["confusion_matrix"]
    cell = max(5, max(len(str(v)) for row in cm for v in row) + 1)
    lines.append("confusion matrix (rows: true, columns: predicted, in the class order above):")
    for n, row in zip(names, cm):
        lines.append(f"  {n:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    if error_rows:
        lines.append(f"most confidently wrong ({min(shown_errors, len(error_rows))} of {n_wrong} errors; "
                     f"{len(error_rows)} in errors.csv):")
        for r in error_rows[:shown_errors]:
            what = r.get("text") or r["id"] or f"#{r['index']}"
            if len(what) > 90:
                what = what[:87] + "..."
            lines.append(f"  {r['confidence']:.3f} {r['predicted']} (true {r['true']}): {what}")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
