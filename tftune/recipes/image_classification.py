"""Image classification: a pretrained CNN, global-average pooled, in stages.

Default: MobileNetV2 with the bundled offline ImageNet weights; a head-only stage, then the
top stages, then (optionally) everything at a low learning rate.
"""

from __future__ import annotations

from tftune.config import (
    BackboneConfig, DataConfig, EarlyStoppingConfig, HeadConfig, RecipeConfig, StageConfig,
)


def default_config() -> RecipeConfig:
    return RecipeConfig(
        recipe="image_classification",
        name="image",
        data=DataConfig(source="folder", image_size=(224, 224)),
        backbone=BackboneConfig(spec="keras_applications:MobileNetV2", weights="asset:mobilenetv2-imagenet"),
        head=HeadConfig(pooling="auto", dropout=0.2),
        stages=(
            StageConfig(name="head", train="head", epochs=2, learning_rate=1e-3,
                        early_stopping=EarlyStoppingConfig(monitor="val_accuracy", patience=1)),
            StageConfig(name="top", train="top:2", epochs=3, learning_rate=1e-4, warmup=0.1,
                        schedule="cosine",
                        early_stopping=EarlyStoppingConfig(monitor="val_accuracy", patience=1)),
        ),
    )


def run(config: RecipeConfig, **kwargs):
    """Trains `config` (see `tftune.train.train` for the keyword arguments)."""
    from tftune.train import train

    return train(config, **kwargs)
