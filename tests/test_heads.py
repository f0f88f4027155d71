"""The classification head: pooling over real tokens / feature maps, dropout, Dense."""

from __future__ import annotations

import numpy as np
import pytest

from tftune.model.backbones import from_keras_model, load_backbone
from tftune.config import BackboneConfig, HeadConfig
from tftune.errors import ConfigError
from tftune.model.heads import MaskedMeanPooling, build_classifier, head_layers


def test_masked_mean_pooling_ignores_padding():
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    out = np.asarray(MaskedMeanPooling()(seq, mask))
    np.testing.assert_allclose(out[0], seq[0, :2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[1], seq[1].mean(axis=0), rtol=1e-6)
    # Whatever sits in the padded positions does not matter.
    seq2 = seq.copy()
    seq2[0, 2:] = 1e6
    np.testing.assert_allclose(np.asarray(MaskedMeanPooling()(seq2, mask)), out, rtol=1e-6)
    # An all-padding row gives zeros, not NaN.
    assert np.all(np.asarray(MaskedMeanPooling()(seq, np.zeros((2, 5), bool))) == 0)


def test_text_classifier_outputs_probabilities_and_ignores_padding(tiny_bert_preset):
    backbone = load_backbone(BackboneConfig(spec=f"keras_hub:{tiny_bert_preset}", sequence_length=16))
    model = build_classifier(backbone, 3, HeadConfig(pooling="mean", dropout=0.0))
    tokens = backbone.preprocessor(["good movie", "the plot was dull"])
    probs = np.asarray(model(tokens))
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Trimming the padding (as the training pipeline does) does not change the result.
    trimmed = {k: v[:, :6] for k, v in tokens.items()}
    np.testing.assert_allclose(np.asarray(model(trimmed)), probs, rtol=1e-5, atol=1e-6)
    assert {l.name for l in head_layers(model)} == {"head_pool", "head_classifier"}


def test_head_options(make_tiny_cnn):
    backbone = from_keras_model(make_tiny_cnn(16), BackboneConfig())
    model = build_classifier(backbone, 4, HeadConfig(pooling="max", dropout=0.3, hidden_units=5), (16, 16))
    names = {l.name for l in head_layers(model)}
    assert names == {"head_pool", "head_dropout", "head_hidden", "head_dropout_2", "head_classifier"}
    assert model.get_layer("head_hidden").units == 5
    assert model.output.shape == (None, 4)
    assert model.get_layer("head_classifier").dtype_policy.compute_dtype == "float32"


@pytest.mark.parametrize(
    "pooling, text, match",
    [("cls", False, "'avg', 'max'"), ("max", True, "'mean', 'cls'")],
)
def test_pooling_that_does_not_fit_the_modality(pooling, text, match, make_tiny_cnn, tiny_bert_preset):
    if text:
        backbone = load_backbone(BackboneConfig(spec=f"keras_hub:{tiny_bert_preset}"))
    else:
        backbone = from_keras_model(make_tiny_cnn(16), BackboneConfig())
    with pytest.raises(ConfigError, match=match) as e:
        build_classifier(backbone, 2, HeadConfig(pooling=pooling), (16, 16))
    assert f"head.pooling={pooling!r}" in str(e.value)
