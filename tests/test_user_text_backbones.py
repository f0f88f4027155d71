"""A user's text model as the backbone: `keras:<file.keras>` or `backbone_model=`.

It takes KerasHub's token dict (a saved KerasHub `BertBackbone`, or a plain Keras model with
`token_ids` / `padding_mask` inputs); the tokenizer comes from `backbone.preprocessor` (a
KerasHub preset folder), or from a saved KerasHub `TextClassifier`'s own preprocessor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import VOCAB, assert_one_line_error, invoke, text_recipe, write_recipe
from tftune.config import BackboneConfig
from tftune.errors import BackboneError
from tftune.model.backbones import from_keras_model, load_backbone


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory, tiny_bert_preset) -> Path:
    """The tiny BERT backbone (no tokenizer) saved as a `.keras` file."""
    import keras_hub

    path = tmp_path_factory.mktemp("user_text") / "bert.keras"
    keras_hub.models.BertBackbone.from_preset(str(tiny_bert_preset)).save(str(path))
    return path


def token_dict_model():
    """A plain Keras text model over KerasHub's token dict: embedding, two Dense layers."""
    import keras

    keras.utils.set_random_seed(0)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
    x = keras.layers.Embedding(len(VOCAB), 8, name="embedding")(token_ids)
    x = keras.layers.Dense(8, activation="relu", name="dense_1")(x)
    x = keras.layers.Dense(8, name="dense_2")(x)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, x)


def test_keras_text_file_with_a_preprocessor_folder(bert_file, tiny_bert_preset):
    import keras_hub

    b = load_backbone(BackboneConfig(spec=f"keras:{bert_file}", sequence_length=16,
                                     preprocessor=str(tiny_bert_preset)))
    assert b.modality == "text" and type(b.model).__name__ == "BertBackbone"
    assert [g.name for g in b.groups] == ["embeddings", "block_0", "block_1", "final"]
    assert b.preprocessor(["good movie"])["token_ids"].shape == (1, 16)
    assert any("backbone.preprocessor" in n for n in b.notes)
    source = keras_hub.models.BertBackbone.from_preset(str(tiny_bert_preset))
    for a, c in zip(source.get_weights(), b.model.get_weights()):
        np.testing.assert_array_equal(a, c)


def test_keras_text_file_staged_run_then_predict(tmp_path, bert_file, tiny_bert_preset, text_csv):
    recipe = text_recipe(tmp_path, text_csv, tiny_bert_preset)
    recipe["backbone"] = {"spec": f"keras:{bert_file}", "sequence_length": 16,
                          "preprocessor": str(tiny_bert_preset)}
    result = invoke("train", write_recipe(tmp_path / "r.yaml", recipe))
    assert result.exit_code == 0, result.output
    assert "Layer groups, bottom to top: embeddings" in result.output
    run = tmp_path / "runs" / "txt"
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["epochs_run"] for s in metrics["stages"]] == [1, 1]
    result = invoke("predict", run, "good movie")
    assert result.exit_code == 0, result.output
    assert "prob_pos" in result.output


def test_saved_text_classifier_brings_its_preprocessor(tmp_path, tiny_bert_preset):
    """A KerasHub TextClassifier saved as .keras: its backbone (without the head) and its
    own preprocessor, at backbone.sequence_length."""
    import keras_hub

    task = keras_hub.models.TextClassifier.from_preset(str(tiny_bert_preset), num_classes=5)
    path = tmp_path / "classifier.keras"
    task.save(str(path))
    b = load_backbone(BackboneConfig(spec=f"keras:{path}", sequence_length=12))
    assert type(b.model).__name__ == "BertBackbone"
    assert b.preprocessor(["good movie"])["token_ids"].shape == (1, 12)
    assert any("saved task" in n for n in b.notes)
    result = invoke("inspect", f"keras:{path}")
    assert result.exit_code == 0, result.output
    assert "text backbone, 4 layer groups" in result.output


def test_backbone_model_object_text_run(tmp_path, tiny_bert_preset, text_csv, eager):
    """`tftune.train(..., backbone_model=...)` with a plain Keras token-dict model; the run's
    saved preprocessor loads again for predict."""
    import tftune
    from tftune.config import config_from_dict

    recipe = text_recipe(tmp_path, text_csv, tiny_bert_preset, name="own")
    recipe["backbone"] = {"spec": "keras:unused.keras", "sequence_length": 16,
                          "preprocessor": str(tiny_bert_preset)}
    recipe["train"] = {"batch_size": 8, "verbose": "quiet"}
    lines = []
    result = tftune.train(config_from_dict(recipe), backbone_model=token_dict_model(),
                          echo=lines.append)
    assert [s["epochs_run"] for s in result.metrics["stages"]] == [1, 1]
    assert any("tokenizer from backbone.preprocessor" in l for l in lines)
    predictor = tftune.load(result.run_dir)
    assert predictor.probabilities(["good movie", "bad film"]).shape == (2, 2)


def test_text_model_without_a_tokenizer_is_one_clear_error(tmp_path, bert_file):
    result = invoke("inspect", f"keras:{bert_file}")
    assert_one_line_error(result, "text model", "backbone.preprocessor",
                          "preprocessor.save_to_preset", "Received: backbone.preprocessor=None")
    with pytest.raises(BackboneError, match="no tokenizer"):
        from_keras_model(token_dict_model(), BackboneConfig())


def test_preprocessor_errors(tmp_path, bert_file, tiny_bert_preset, make_tiny_cnn):
    import keras_hub

    with pytest.raises(BackboneError, match="'backbone.preprocessor': folder not found"):
        load_backbone(BackboneConfig(spec=f"keras:{bert_file}",
                                     preprocessor=str(tmp_path / "missing")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackboneError, match="found no text classifier preprocessor or tokenizer"):
        load_backbone(BackboneConfig(spec=f"keras:{bert_file}", preprocessor=str(empty)))
    # A tokenizer with more tokens than the model's embedding has rows.
    small = keras_hub.models.BertBackbone(vocabulary_size=10, num_layers=1, num_heads=1,
                                          hidden_dim=4, intermediate_dim=8, max_sequence_length=8)
    with pytest.raises(BackboneError, match=f"has {len(VOCAB)} tokens and the model's embedding 10"):
        from_keras_model(small, BackboneConfig(preprocessor=str(tiny_bert_preset)))
    with pytest.raises(BackboneError, match="is an image backbone. Remove backbone.preprocessor"):
        from_keras_model(make_tiny_cnn(32), BackboneConfig(preprocessor=str(tiny_bert_preset)))


def test_text_model_inputs_are_checked(tiny_bert_preset):
    import keras

    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    only_ids = keras.Model({"token_ids": token_ids},
                           keras.layers.Embedding(len(VOCAB), 4)(token_ids))
    with pytest.raises(BackboneError, match="without the input 'padding_mask'"):
        from_keras_model(only_ids, BackboneConfig(preprocessor=str(tiny_bert_preset)))


def test_string_input_model_is_refused_with_the_alternative():
    """A model taking raw strings (TextVectorization inside): tftune's text path tokenizes in
    the input pipeline with a KerasHub tokenizer it saves with the run, so it is refused
    with what to use instead."""
    import keras

    texts = keras.Input((), dtype="string", name="text")
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=8)
    vectorize.adapt(["good movie", "bad film"])
    model = keras.Model(texts, keras.layers.Embedding(20, 4)(vectorize(texts)))
    with pytest.raises(BackboneError, match="takes raw strings.*token_ids and padding_mask"):
        from_keras_model(model, BackboneConfig())
