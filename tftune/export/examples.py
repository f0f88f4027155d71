"""The examples an export is checked (and int8-calibrated) with: the run's own splits, or
labelled data the user passes."""

from __future__ import annotations

from typing import Optional

from tftune.errors import TftuneError
from tftune.export.base import REPRESENTATIVE_EXAMPLES


def labelled_examples(run, data: Optional[str], split: str, columns: tuple[str, str],
                      encoding: Optional[str] = None):
    """`data` (a folder of class folders or a CSV / JSONL file, in `encoding`, default the
    run's data.encoding) read with the run's classes and task (a text-pair run's two
    `data.text_columns`), else the run's `split` (validation when the run has no test split)."""
    from tftune.data.labelled import load_labelled

    if data is not None:
        cfg = run.config.data
        return load_labelled(
            data, run.modality, run.class_names, run.image_size,
            text_column=columns[0], label_column=columns[1], skip_unknown_labels=True,
            task=run.task, label_columns=cfg.label_columns, label_separator=cfg.label_separator,
            text_columns=cfg.text_columns, encoding=encoding or cfg.encoding,
        )
    try:
        return run.split(split)
    except TftuneError:
        if split == "test":  # a run without a test split: verify on validation examples
            return run.split("val")
        raise


def take_inputs(examples, n: int, shuffle: bool = False) -> list:
    """The first `n` inputs of `examples` (shuffled with a fixed seed if asked), as numpy
    arrays (images), str (texts) or (str, str) tuples (text pairs)."""
    ds = examples.dataset.map(lambda x, y: x)
    if shuffle:
        ds = ds.shuffle(min(examples.size, 2000), seed=0)
    out = []
    for x in ds.take(n).as_numpy_iterator():
        if isinstance(x, tuple):
            out.append(tuple(v.decode("utf-8") for v in x))
        else:
            out.append(x.decode("utf-8") if isinstance(x, bytes) else x)
    return out


def calibration_inputs(run, data: Optional[str], columns: tuple[str, str],
                       n: int = REPRESENTATIVE_EXAMPLES, encoding: Optional[str] = None
                       ) -> tuple[list, str]:
    """(`n` shuffled training inputs, where they come from) for int8 calibration."""
    calibration = labelled_examples(run, data, "train", columns, encoding)
    return take_inputs(calibration, n, shuffle=True), calibration.description
