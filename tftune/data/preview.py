"""`tftune preview RECIPE`: what training will see, before it trains.

Images: a PNG grid of the first training batch of a stage's epoch, after augmentation (the
batch training draws for that epoch: same seed, same order), titled with each example's label
(mixed labels as their two largest shares). Texts: a table of the first training examples as
the backbone's tokenizer splits them (tokens, length, truncation), printed and written as text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from tftune.config import RecipeConfig
from tftune.errors import ConfigError


@dataclasses.dataclass
class Preview:
    path: Path
    count: int
    lines: list


def preview(cfg: RecipeConfig, output: Optional[str] = None, count: int = 16, stage: int = 1,
            epoch: int = 1, echo: Callable = print) -> Preview:
    """Writes the preview of `cfg`'s training examples for stage `stage`, epoch `epoch`
    (1-based) to `output` (default: `<output_dir>/<name>-preview.png` or `.txt`)."""
    import keras

    from tftune.data import load_data, pipeline
    from tftune.data.augment import check_augmentations
    from tftune.tasks import get_task

    if not 1 <= stage <= len(cfg.stages):
        raise ConfigError(f"Invalid --stage. Expected 1..{len(cfg.stages)} (the recipe has "
                          f"{len(cfg.stages)} stages). Received: {stage}")
    keras.utils.set_random_seed(cfg.train.seed)
    reader = get_task(cfg.task, (), cfg)
    reader.check_settings()
    splits = load_data(cfg.data, cfg.train.seed, reader)
    task = get_task(cfg.task, splits.class_names, cfg)
    check_augmentations(cfg, splits.modality, task)
    seed = pipeline.epoch_seed(cfg.train.seed, stage - 1, epoch - 1)
    n_train = splits.sizes.get("train") or int(splits.train.cardinality())
    suffix = ".png" if splits.modality == "image" else ".txt"
    path = Path(output) if output else Path(cfg.output_dir) / f"{cfg.name}-preview{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if splits.modality == "image":
        augment = stage_augment(cfg, stage)
        pipe = pipeline.image_pipeline(n_train, max(count, 1), cfg.train.seed, augment,
                                       tuple(cfg.data.image_size),
                                       num_classes=len(splits.class_names) or None)
        images, labels = next(iter(pipe.batches(pipe.source(splits.train), True, seed)))
        titles = [label_text(y, splits.class_names) for y in labels.numpy()]
        _grid(images.numpy()[:count], titles[:count], path,
              f"{cfg.name}: stage {stage}, epoch {epoch}, augment: "
              f"{_augment_text(augment)}")
        lines = [f"{len(titles[:count])} training images after augmentation -> {path}"]
    else:
        lines = _text_table(cfg, splits, n_train, count, seed)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for line in lines:
        echo(line)
    return Preview(path, count, lines)


def stage_augment(cfg: RecipeConfig, stage: int) -> tuple:
    """The augmentations stage `stage` (1-based) trains with: its own, else `data.augment`."""
    own = cfg.stages[stage - 1].augment
    return tuple(cfg.data.augment if own is None else own)


def label_text(y, class_names) -> str:
    """A label for a tile: the class name, or a mixed label's two largest shares."""
    import numpy as np

    y = np.asarray(y)
    if y.ndim == 0 or y.size == 1:
        i = int(y.reshape(-1)[0]) if np.issubdtype(y.dtype, np.integer) else None
        if i is not None and class_names and 0 <= i < len(class_names):
            return str(class_names[i])
        return f"{float(y.reshape(-1)[0]):g}"
    order = np.argsort(-y)
    parts = [f"{y[i]:.2f} {class_names[i] if class_names else i}" for i in order[:2] if y[i] >= 0.005]
    return " + ".join(parts)


def _augment_text(augment) -> str:
    from tftune.data.augment import parse

    specs = parse(augment)
    return ", ".join(name for name, _ in specs) if specs else "none"


def _grid(images, titles, path: Path, heading: str) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(images)
    cols = min(n, 4 if n <= 8 else 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.3 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(np.clip(image, 0, 255).astype(np.uint8))
        ax.set_title(title, fontsize=7)
    fig.suptitle(heading, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _text_table(cfg: RecipeConfig, splits, n_train: int, count: int, seed: int) -> list[str]:
    """The first `count` training examples of the epoch (in its shuffled order), tokenised."""
    import numpy as np

    from tftune.data import pipeline
    from tftune.model.backbones import load_backbone

    backbone = load_backbone(cfg.backbone, tuple(cfg.data.image_size))
    pre = backbone.preprocessor
    tokenizer = getattr(pre, "tokenizer", None)
    pipe = pipeline.text_pipeline(pre, n_train, cfg.train.batch_size, cfg.train.seed)
    seq_len = int(pre.sequence_length)
    shuffled = pipe.shuffled(splits.train, n_train, seed).take(count)
    lines = [f"First {count} training examples of the epoch, as {backbone.spec} tokenizes them "
             f"(sequence length {seq_len}; [..] marks a truncated text):", ""]
    lines.append(f"{'#':>3}  {'label':<14} {'tokens':>6}  text -> tokens")
    for i, (x, y) in enumerate(shuffled):
        tokens = pipeline.tokenize_texts(pre, _batched(x))
        ids = np.asarray(tokens["token_ids"])[0]
        mask = np.asarray(tokens["padding_mask"])[0].astype(bool)
        ids = ids[mask]
        pieces = [tokenizer.id_to_token(int(t)) for t in ids] if tokenizer is not None else list(map(str, ids))
        text = _text(x)
        truncated = len(ids) >= seq_len
        label = label_text(y.numpy(), splits.class_names)
        lines.append(f"{i + 1:>3}  {label[:14]:<14} {len(ids):>6}  {text[:70]!r}")
        lines.append(f"{'':>26}-> {' '.join(pieces)}{' [..]' if truncated else ''}")
    return lines


def _batched(x):
    import tensorflow as tf

    if isinstance(x, (tuple, list)):
        return tuple(tf.reshape(t, [1]) for t in x)
    return tf.reshape(x, [1])


def _text(x) -> str:
    if isinstance(x, (tuple, list)):
        return " | ".join(t.numpy().decode("utf-8", "replace") for t in x)
    return x.numpy().decode("utf-8", "replace")
