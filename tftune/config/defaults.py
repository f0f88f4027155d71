"""The base recipes: the defaults a recipe file's settings extend, named by its `recipe:` key.

A recipe file says `recipe: text_classification` (or `image_classification`) and then only
what differs from these. They are data, registered here and nowhere else.
"""

from __future__ import annotations

from tftune.errors import ConfigError, did_you_mean



def _stages(head_epochs: int, head_lr: float, top: str, top_lr: float, schedule: str) -> list:
    """A head-only stage, then `top` (e.g. `all`, `top:2`) with 10 % warmup and `schedule`;
    both stop early on the task's default monitor (validation accuracy for classification)."""
    def es():
        return {"monitor": "auto", "patience": 1}

    return [
        {"name": "head", "train": "head", "epochs": head_epochs, "learning_rate": head_lr,
         "early_stopping": es()},
        {"name": top.split(":")[0], "train": top, "epochs": 3, "learning_rate": top_lr,
         "warmup": 0.1, "schedule": schedule, "early_stopping": es()},
    ]


BASE_RECIPES: dict[str, dict] = {
    # A pretrained BERT-style KerasHub backbone, mean-pooled: a head-only stage at a high
    # learning rate, then everything at a low one with warmup and decay.
    "text_classification": {
        "name": "text",
        "data": {"source": "csv", "val_fraction": 0.1, "test_fraction": 0.2},
        "backbone": {"spec": "hf:asset:all-minilm-l6-v2", "weights": None, "sequence_length": 64},
        "head": {"pooling": "auto", "dropout": 0.1},
        "stages": _stages(1, 2e-3, "all", 5e-5, "linear"),
    },
    # A pretrained CNN, global-average pooled: MobileNetV2 with the bundled offline ImageNet
    # weights; a head-only stage, then the top two stages.
    "image_classification": {
        "name": "image",
        "data": {"source": "folder", "image_size": [224, 224]},
        "backbone": {"spec": "keras_applications:MobileNetV2", "weights": "asset:mobilenetv2-imagenet"},
        "head": {"pooling": "auto", "dropout": 0.2},
        "stages": _stages(2, 1e-3, "top:2", 1e-4, "cosine"),
    },
}


def base_recipe(name: str) -> dict:
    """A copy of the base recipe `name` as a plain mapping (recipe-file form)."""
    import copy

    if name not in BASE_RECIPES:
        raise ConfigError(
            f"Invalid value for 'recipe' (the base recipe a recipe file extends). Expected one "
            f"of: {', '.join(repr(n) for n in BASE_RECIPES)}. Received: {name!r}."
            f"{did_you_mean(name, BASE_RECIPES)}"
        )
    return {"recipe": name, **copy.deepcopy(BASE_RECIPES[name])}
