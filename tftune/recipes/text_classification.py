"""Text classification: a pretrained BERT-style KerasHub backbone, mean-pooled, in stages.

Default: all-MiniLM-L6-v2 (the bundled offline asset); a head-only stage at a high learning
rate, then the top blocks, then everything at a low learning rate with warmup and decay.
"""

from __future__ import annotations

from tftune.config import (
    BackboneConfig, DataConfig, EarlyStoppingConfig, HeadConfig, RecipeConfig, StageConfig,
)


def default_config() -> RecipeConfig:
    return RecipeConfig(
        recipe="text_classification",
        name="text",
        data=DataConfig(source="csv", val_fraction=0.1, test_fraction=0.2),
        backbone=BackboneConfig(spec="hf:asset:all-minilm-l6-v2", weights=None, sequence_length=64),
        head=HeadConfig(pooling="auto", dropout=0.1),
        stages=(
            StageConfig(name="head", train="head", epochs=1, learning_rate=2e-3,
                        early_stopping=EarlyStoppingConfig(monitor="val_accuracy", patience=1)),
            StageConfig(name="all", train="all", epochs=3, learning_rate=5e-5, warmup=0.1,
                        schedule="linear",
                        early_stopping=EarlyStoppingConfig(monitor="val_accuracy", patience=1)),
        ),
    )


def run(config: RecipeConfig, **kwargs):
    """Trains `config` (see `tftune.train.train` for the keyword arguments)."""
    from tftune.train import train

    return train(config, **kwargs)
