"""The bundled pretrained weights load through `tftune.model.backbones` and carry what pretraining
taught them: MiniLM sentence embeddings put related sentences together, and the converted
ImageNet MobileNetV2 separates shapes that a random network does not.

(Conversion of MobileNetV2 against torch's own outputs is in test_mobilenetv2_torch.py; here
the weights go through `load_backbone`, with its input normalisation, as the recipes use them.)
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import requires_asset
from tftune.model.backbones import load_backbone
from tftune.config import BackboneConfig

pytestmark = pytest.mark.assets

# (anchor, related, unrelated)
TRIPLES = [
    ("A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch.",
     "Interest rates were raised by the central bank."),
    ("How do I bake bread at home?", "What is a good recipe for a loaf?",
     "The football match ended in a draw."),
]


def mean_pooled(model, preprocessor, texts) -> np.ndarray:
    """Sentence-transformers style: mean over real tokens (padding masked out), unit length."""
    tokens = preprocessor(texts)
    sequence = np.asarray(model(tokens)["sequence_output"], dtype=np.float32)
    mask = np.asarray(tokens["padding_mask"], dtype=np.float32)[..., None]
    emb = (sequence * mask).sum(axis=1) / mask.sum(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def similarity_gaps(model, preprocessor) -> list[float]:
    gaps = []
    for anchor, related, unrelated in TRIPLES:
        e = mean_pooled(model, preprocessor, [anchor, related, unrelated])
        gaps.append(float(e[0] @ e[1] - e[0] @ e[2]))
    return gaps


@pytest.fixture(scope="module")
def minilm():
    requires_asset("all-minilm-l6-v2")
    return load_backbone(BackboneConfig(spec="hf:asset:all-minilm-l6-v2", sequence_length=32))


def test_minilm_loads_as_a_text_backbone(minilm):
    assert minilm.modality == "text"
    names = [g.name for g in minilm.groups]
    assert names == ["embeddings"] + [f"block_{k}" for k in range(6)] + ["final"]
    assert minilm.model.count_params() > 20_000_000
    assert int(minilm.preprocessor.sequence_length) == 32


def test_minilm_embeddings_put_related_sentences_together(minilm):
    gaps = similarity_gaps(minilm.model, minilm.preprocessor)
    assert min(gaps) > 0.3, gaps
    for anchor, related, unrelated in TRIPLES:
        e = mean_pooled(minilm.model, minilm.preprocessor, [anchor, related, unrelated])
        assert e[0] @ e[1] > 0.5 and e[0] @ e[2] < 0.25


def test_random_minilm_does_not(minilm):
    import keras

    keras.utils.set_random_seed(0)
    random_model = type(minilm.model).from_config(minilm.model.get_config())
    pretrained = similarity_gaps(minilm.model, minilm.preprocessor)
    untrained = similarity_gaps(random_model, minilm.preprocessor)
    assert max(abs(g) for g in untrained) < 0.1, untrained
    assert min(pretrained) > 3 * max(abs(g) for g in untrained)


# ------------------------------------------------------------------------------------------
# MobileNetV2


SIZE = 96


def shapes(n: int, kind: str, seed: int) -> np.ndarray:
    """Filled circles or squares of random colour, size and place on a random background."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        background = tuple(int(c) for c in rng.integers(0, 256, 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        image = Image.new("RGB", (SIZE, SIZE), background)
        draw = ImageDraw.Draw(image)
        r = int(rng.integers(18, 36))
        cx, cy = (int(v) for v in rng.integers(r, SIZE - r, 2))
        box = [cx - r, cy - r, cx + r, cy + r]
        (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=colour)
        pixels = np.asarray(image, np.float32) + rng.normal(0, 8, (SIZE, SIZE, 3))
        out.append(np.clip(pixels, 0, 255))
    return np.stack(out).astype(np.float32)


def nearest_centroid_accuracy(backbone, train_x, train_y, test_x, test_y) -> float:
    from tftune.model.backbones.preprocessing import ImagePreprocessing

    def features(x):
        pixels = ImagePreprocessing(backbone.image_preprocessing)(x)
        f = np.asarray(backbone.model(pixels, training=False)).mean(axis=(1, 2))
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    f_train, f_test = features(train_x), features(test_x)
    centroids = np.stack([f_train[train_y == k].mean(axis=0) for k in (0, 1)])
    return float((np.argmax(f_test @ centroids.T, axis=1) == test_y).mean())


def test_mobilenetv2_imagenet_features_separate_shapes():
    requires_asset("mobilenetv2-imagenet")
    n = 12
    train_x = np.concatenate([shapes(n, "circle", 0), shapes(n, "square", 1)])
    test_x = np.concatenate([shapes(n, "circle", 2), shapes(n, "square", 3)])
    y = np.array([0] * n + [1] * n)

    pretrained = load_backbone(
        BackboneConfig(spec="keras_applications:MobileNetV2", weights="asset:mobilenetv2-imagenet"),
        (SIZE, SIZE),
    )
    assert pretrained.image_preprocessing == "torch"  # the converted torch weights' normalisation
    import keras

    keras.utils.set_random_seed(0)
    random = load_backbone(
        BackboneConfig(spec="keras_applications:MobileNetV2", weights="none"), (SIZE, SIZE)
    )
    acc_pretrained = nearest_centroid_accuracy(pretrained, train_x, y, test_x, y)
    acc_random = nearest_centroid_accuracy(random, train_x, y, test_x, y)
    assert acc_pretrained >= 0.9, (acc_pretrained, acc_random)
    assert acc_pretrained >= acc_random + 0.2, (acc_pretrained, acc_random)
