"""`evaluate`'s files for single-label classification: the confusion matrix (CSV and PNG),
the most confidently wrong examples (`errors.csv`, and `errors.png` for images) and the
printed report."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from tftune import rundir
from tftune.evaluation import plots

ERROR_IMAGES = 16


def write_files(out_dir: Path, scored, class_names) -> str:
    """Writes the classification files for `scored` (an `evaluate.Scored`) into `out_dir`;
    returns the printed report."""
    probabilities, y_true, report, examples = scored.outputs, scored.y_true, scored.report, scored.examples
    wrong = np.flatnonzero(np.argmax(probabilities, axis=1) != y_true)
    confidence = probabilities[wrong, np.argmax(probabilities[wrong], axis=1)]
    worst = wrong[np.argsort(-confidence, kind="mergesort")][:scored.errors]
    texts = scored.texts(worst)
    error_rows = []
    for rank, i in enumerate(worst, 1):
        pred = int(np.argmax(probabilities[i]))
        error_rows.append({
            "rank": rank,
            "index": int(i),
            "id": examples.ids[i] if examples.ids else "",
            **({"text": texts[int(i)]} if scored.modality == "text" else {}),
            "true": class_names[y_true[i]],
            "predicted": class_names[pred],
            "confidence": round(float(probabilities[i, pred]), 6),
            "p_true": round(float(probabilities[i, y_true[i]]), 6),
        })
    text = format_report(scored.run_name, examples, report, error_rows, len(wrong))
    _write_confusion_csv(out_dir / "confusion_matrix.csv", report["confusion_matrix"], class_names)
    plots.confusion_matrix(
        np.asarray(report["confusion_matrix"]), class_names, out_dir / "confusion_matrix.png",
        title=f"{scored.run_name} on {examples.description} (accuracy {report['accuracy']:.4f})",
    )
    write_csv(out_dir / "errors.csv", error_rows,
              ["rank", "index", "id", "true", "predicted", "confidence", "p_true"])
    if scored.modality == "image" and len(worst):
        shown = worst[:ERROR_IMAGES]
        images = scored.images(shown)
        plots.image_grid(
            [images[int(i)] for i in shown],
            [f"{r['id'].split('/')[-1] or '#' + str(r['index'])}\ntrue {r['true']}, "
             f"predicted {r['predicted']} ({r['confidence']:.2f})" for r in error_rows[:len(shown)]],
            out_dir / "errors.png",
            title=f"Most confidently wrong ({len(shown)} of {len(wrong)} errors)",
        )
    return text


def closing_lines(report: dict, rows: list[dict], header: str, decision, width: int = 80,
                  shown: int = 5) -> list[str]:
    """A report's last lines: `header` and the first `shown` of the error `rows`, each as
    `decision(row)` and the example (its text, id or index), then the report's notes."""
    lines = [header] if rows else []
    for r in rows[:shown]:
        what = r.get("text") or r["id"] or f"#{r['index']}"
        lines.append(f"  {decision(r)}: {what[:width]}")
    return lines + [f"note: {note}" for note in report.get("notes", [])]


def write_csv(path: Path, rows: list[dict], default_fields: list[str]) -> None:
    """`rows` as a CSV with a header (the first row's keys, else `default_fields`)."""
    buf = io.StringIO()
    fields = list(rows[0]) if rows else default_fields
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    rundir.write_text(path, buf.getvalue())


def _write_confusion_csv(path: Path, cm, class_names) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, cm):
        writer.writerow([name, *row])
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
