"""Backbone specs, offline errors, and layer groups (the units stages freeze and unfreeze)."""

from __future__ import annotations

import time

import pytest

from helpers import invoke
from tftune.model.backbones import load_backbone, parse_spec
from tftune.model.backbones.groups import _spatial, layer_groups
from tftune.config import BackboneConfig, GroupPattern, HeadConfig
from tftune.errors import BackboneError


def weighted_layers(model) -> list:
    return [l for l in model.layers if l.weights and not l.name.startswith("input")]


def assert_partition(model, groups) -> None:
    """Every layer with weights is in exactly one group, and groups hold nothing else."""
    grouped = [id(l) for g in groups for l in g.layers]
    assert len(grouped) == len(set(grouped)), "a layer is in two groups"
    assert set(grouped) == {id(l) for l in weighted_layers(model)}
    assert sum(g.num_params for g in groups) == model.count_params()


# ------------------------------------------------------------------------------------------
# specs and errors


def test_parse_spec():
    assert parse_spec("keras_hub:/some/dir") == ("keras_hub", "/some/dir")
    assert parse_spec("hf:asset:all-minilm-l6-v2") == ("hf", "asset:all-minilm-l6-v2")
    assert parse_spec("keras:C:/models/m.keras") == ("keras", "C:/models/m.keras")


def test_spec_without_kind():
    with pytest.raises(BackboneError) as e:
        parse_spec("MobileNetV2")
    assert "KIND:TARGET" in str(e.value) and "keras_applications" in str(e.value)


def test_unknown_kind_suggests_the_nearest():
    with pytest.raises(BackboneError, match=r"Did you mean 'keras_hub:bert_tiny_en_uncased'"):
        parse_spec("keras_hubb:bert_tiny_en_uncased")
    with pytest.raises(BackboneError, match=r"Did you mean 'keras_applications:MobileNetV2'"):
        parse_spec("keras_application:MobileNetV2")
    with pytest.raises(BackboneError, match="nothing after"):
        parse_spec("hf:")


def test_preset_name_without_download_fails_fast_and_offline():
    start = time.perf_counter()
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneConfig(spec="keras_hub:bert_tiny_en_uncased", allow_download=False))
    assert time.perf_counter() - start < 10
    msg = str(e.value)
    assert "download" in msg and "allow_download" in msg
    assert "keras_hub:/path/to/preset_dir" in msg  # how to point at local weights


def test_hf_name_without_download_fails_offline():
    with pytest.raises(BackboneError, match="allow_download"):
        load_backbone(BackboneConfig(spec="hf:sentence-transformers/all-MiniLM-L6-v2"))


def test_hf_missing_folder(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        load_backbone(BackboneConfig(spec=f"hf:{tmp_path / 'missing'}"))


def test_hf_folder_that_is_a_keras_hub_preset(tiny_bert_preset):
    with pytest.raises(BackboneError, match="keras_hub:"):
        load_backbone(BackboneConfig(spec=f"hf:{tiny_bert_preset}"))


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="config.json"):
        load_backbone(BackboneConfig(spec=f"keras_hub:{tmp_path / 'empty'}"))


def test_keras_applications_typo_suggests():
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneConfig(spec="keras_applications:MobileNetV3", weights="none"))
    assert "Did you mean 'keras_applications:MobileNetV" in str(e.value)
    with pytest.raises(BackboneError, match=r"Did you mean 'keras_applications:MobileNetV2'"):
        load_backbone(BackboneConfig(spec="keras_applications:MobilenetV2", weights="none"))


def test_missing_weights_file(tmp_path):
    with pytest.raises(BackboneError, match="Weights file not found"):
        load_backbone(
            BackboneConfig(spec="keras_applications:MobileNetV2", weights=str(tmp_path / "w.h5")),
            (32, 32),
        )


def test_keras_file_spec(tmp_path, tiny_cnn_file):
    backbone = load_backbone(BackboneConfig(spec=f"keras:{tiny_cnn_file}"))
    assert backbone.modality == "image"
    assert [g.name for g in backbone.groups] == ["stem", "stage_1", "stage_2"]
    with pytest.raises(BackboneError, match="not found"):
        load_backbone(BackboneConfig(spec=f"keras:{tmp_path / 'none.keras'}"))
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(BackboneError, match="Cannot load"):
        load_backbone(BackboneConfig(spec=f"keras:{junk}"))


def test_user_model_must_take_images():
    import keras

    from tftune.model.backbones import from_keras_model

    inputs = keras.Input((10,))
    with pytest.raises(BackboneError, match="input shape"):
        from_keras_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)), BackboneConfig())


# ------------------------------------------------------------------------------------------
# layer groups


def test_tiny_bert_groups(tiny_bert_preset):
    backbone = load_backbone(BackboneConfig(spec=f"keras_hub:{tiny_bert_preset}", sequence_length=16))
    assert backbone.modality == "text"
    assert backbone.preprocessor is not None
    assert [g.name for g in backbone.groups] == ["embeddings", "block_0", "block_1", "final"]
    assert_partition(backbone.model, backbone.groups)
    names = {g.name: [l.name for l in g.layers] for g in backbone.groups}
    assert names["block_0"] == ["transformer_layer_0"]
    assert names["block_1"] == ["transformer_layer_1"]
    assert "token_embedding" in names["embeddings"]
    tokens = backbone.preprocessor(["good movie", "bad film was very dull"])
    assert tokens["token_ids"].shape == (2, 16)


@pytest.mark.parametrize("size", [32, 64])
def test_mobilenetv2_groups_follow_resolution(size):
    backbone = load_backbone(
        BackboneConfig(spec="keras_applications:MobileNetV2", weights="none"), (size, size)
    )
    groups = backbone.groups
    names = [g.name for g in groups]
    assert names[0] == "stem"
    assert names[1:] == [f"stage_{k}" for k in range(1, len(groups))]
    assert len(groups) >= 4
    assert_partition(backbone.model, groups)
    # Each group ends at a lower resolution than the one before: ordered bottom to top.
    out_res = [min(r for r in map(_spatial, g.layers) if r is not None) for g in groups]
    assert out_res == sorted(out_res, reverse=True) and len(set(out_res)) == len(out_res)
    assert out_res[0] == size // 2
    # The very first and last layers with weights are in the first and last groups.
    weighted = weighted_layers(backbone.model)
    assert weighted[0] in groups[0].layers and weighted[-1] in groups[-1].layers
    assert backbone.image_preprocessing == "tf"


def test_tiny_cnn_groups(make_tiny_cnn):
    model = make_tiny_cnn(32)
    groups = layer_groups(model)
    assert [(g.name, [l.name for l in g.layers]) for g in groups] == [
        ("stem", ["stem_conv", "stem_bn"]),
        ("stage_1", ["block1_conv", "block1_bn"]),
        ("stage_2", ["block2_conv", "block2_bn"]),
    ]


def test_user_regex_groups(make_tiny_cnn):
    model = make_tiny_cnn(32)
    groups = layer_groups(model, [GroupPattern("convs", r"_conv$"), GroupPattern("top_bn", r"block2_bn")])
    assert [(g.name, [l.name for l in g.layers]) for g in groups] == [
        ("other", ["stem_bn", "block1_bn"]),
        ("convs", ["stem_conv", "block1_conv", "block2_conv"]),
        ("top_bn", ["block2_bn"]),
    ]
    assert_partition(model, groups)
    with pytest.raises(BackboneError, match="'nothing'.*matches no layer"):
        layer_groups(model, [GroupPattern("nothing", r"^zzz")])
    with pytest.raises(BackboneError, match="not a valid regular expression"):
        layer_groups(model, [GroupPattern("bad", r"block(")])


def test_regex_groups_through_the_config(tiny_bert_preset):
    cfg = BackboneConfig(
        spec=f"keras_hub:{tiny_bert_preset}",
        groups=(GroupPattern("lower", r"embedding|layer_0"), GroupPattern("upper", r"layer_1|pooled")),
    )
    backbone = load_backbone(cfg)
    assert [g.name for g in backbone.groups] == ["lower", "upper"]
    assert_partition(backbone.model, backbone.groups)


def test_generic_model_is_split_by_parameters():
    import keras

    inputs = keras.Input((12,), name="features")
    x = inputs
    for k, units in enumerate([16, 16, 16, 16, 16, 4]):
        x = keras.layers.Dense(units, name=f"dense_{k}")(x)
    model = keras.Model(inputs, x)
    groups = layer_groups(model, generic_groups=3)
    assert [g.name for g in groups] == ["part_1", "part_2", "part_3"]
    assert_partition(model, groups)
    order = [l.name for g in groups for l in g.layers]
    assert order == [f"dense_{k}" for k in range(6)]  # consecutive, bottom to top
    sizes = [g.num_params for g in groups]
    assert max(sizes) < 0.6 * sum(sizes)
    many = layer_groups(model, generic_groups=50)  # never more groups than layers
    assert 1 < len(many) <= 6 and all(g.layers for g in many)
    assert_partition(model, many)


def test_model_without_weights():
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.ReLU()(inputs))
    with pytest.raises(BackboneError, match="no layers with weights"):
        layer_groups(model)


# ------------------------------------------------------------------------------------------
# tftune inspect


def test_inspect_prints_groups_with_parameter_counts(tiny_bert_preset):
    backbone = load_backbone(BackboneConfig(spec=f"keras_hub:{tiny_bert_preset}"))
    result = invoke("inspect", f"keras_hub:{tiny_bert_preset}", "--layers")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "text backbone, 4 layer groups" in out
    assert f"{sum(g.num_params for g in backbone.groups):,} parameters" in out
    for g in backbone.groups:
        line = next(l for l in out.splitlines() if f" {g.name} " in l and "layers" in l)
        assert f"{g.num_params:,}" in line
    assert "transformer_layer_0 (TransformerEncoder)" in out


def test_inspect_bad_spec_is_one_line_error():
    result = invoke("inspect", "keras_hub:bert_tiny_en_uncased")
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error: ")
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------
# weights: imagenet downloads only when allowed


@pytest.fixture
def blocked_downloads(tmp_path, monkeypatch):
    """An empty Keras cache and a downloader that records calls instead of reaching out."""
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    calls = []

    def fake_urlretrieve(url, *args, **kwargs):
        calls.append(url)
        raise Exception(f"URL fetch failure on {url}: blocked in tests")

    monkeypatch.setattr(file_utils, "urlretrieve", fake_urlretrieve)
    monkeypatch.setattr(keras_config, "keras_home", lambda: str(tmp_path / "keras_home"))
    (tmp_path / "keras_home").mkdir()
    return calls


def test_imagenet_weights_are_not_downloaded_unless_allowed(blocked_downloads):
    """`backbone.allow_download: false` (the default) means no download attempt at all."""
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneConfig(spec="keras_applications:MobileNetV2", weights="imagenet"), (96, 96))
    assert blocked_downloads == [], "tftune tried to download with allow_download=false"
    msg = str(e.value)
    assert "asset:mobilenetv2-imagenet" in msg  # the offline alternative is named


def test_imagenet_download_failure_when_allowed_is_explained(blocked_downloads):
    with pytest.raises(BackboneError, match="download") as e:
        load_backbone(
            BackboneConfig(spec="keras_applications:MobileNetV2", weights="imagenet", allow_download=True),
            (96, 96),
        )
    assert len(blocked_downloads) == 1
    assert "asset:mobilenetv2-imagenet" in str(e.value)


def test_local_weights_file(tmp_path):
    import keras
    import numpy as np

    keras.utils.set_random_seed(1)
    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mnv2.weights.h5"
    source.save_weights(str(path))
    backbone = load_backbone(
        BackboneConfig(spec="keras_applications:MobileNetV2", weights=str(path)), (32, 32)
    )
    for a, b in zip(source.get_weights(), backbone.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    wrong = tmp_path / "small.weights.h5"
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save_weights(str(wrong))
    with pytest.raises(BackboneError, match="does not fit"):
        load_backbone(BackboneConfig(spec="keras_applications:MobileNetV2", weights=str(wrong)), (32, 32))


# ------------------------------------------------------------------------------------------
# input normalisation


def test_image_preprocessing_modes():
    import numpy as np

    from tftune.model.backbones.preprocessing import ImagePreprocessing

    pixels = np.array([[[[0.0, 127.5, 255.0]]]], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(ImagePreprocessing("tf")(pixels)), [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)
    torch = np.asarray(ImagePreprocessing("torch")(pixels))
    expected = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(torch, expected, atol=1e-5)
    caffe = np.asarray(ImagePreprocessing("caffe")(pixels))
    np.testing.assert_allclose(caffe, [[[[255.0 - 103.939, 127.5 - 116.779, 0.0 - 123.68]]]], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(ImagePreprocessing("none")(pixels)), pixels)
    with pytest.raises(ValueError, match="Expected one of: tf, torch, caffe, none"):
        ImagePreprocessing("imagenet")


def test_sequence_length_longer_than_the_backbone_supports(tiny_bert_preset):
    from tftune.model.backbones import load_backbone
    from tftune.config import BackboneConfig
    from tftune.errors import BackboneError

    with pytest.raises(BackboneError, match="sequence_length=64 is longer .* supports \\(32 tokens\\)"):
        load_backbone(BackboneConfig(spec=f"keras_hub:{tiny_bert_preset}", sequence_length=64))


def test_efficientnet_groups_follow_resolution_despite_squeeze_excitation():
    """EfficientNet blocks hold 1x1 squeeze-and-excitation maps; a stage is still decided by
    each block's output resolution, and the input Rescaling/Normalization join the stem."""
    import keras

    from tftune.model.backbones.groups import layer_groups

    model = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(64, 64, 3))
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["stem", "stage_1", "stage_2", "stage_3", "stage_4"]
    sizes = [g.layers[-1].output.shape[1] for g in groups]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    owner = {}
    for g in groups:
        for layer in g.layers:
            if layer.name.startswith("block"):
                owner.setdefault(layer.name[:7], set()).add(g.name)
    assert all(len(names) == 1 for names in owner.values()), owner
    assert "normalization" in [l.name for l in groups[0].layers]


# ------------------------------------------------------------------------------------------
# KerasHub image presets


@pytest.fixture(scope="module")
def resnet_preset(tmp_path_factory):
    from helpers import save_resnet_preset

    return save_resnet_preset(tmp_path_factory.mktemp("resnet") / "preset")


def test_keras_hub_image_preset_loads_with_its_converter_normalisation(resnet_preset):
    import keras
    import numpy as np

    from tftune.model.heads import build_classifier

    b = load_backbone(BackboneConfig(spec=f"keras_hub:{resnet_preset}"), (32, 32))
    assert b.modality == "image" and b.preprocessor is None
    # CNN stages by resolution (built at 32 px): the stem (16 px), then the three one-block
    # stacks (8, 4, 2 px).
    assert [g.name for g in b.groups] == ["stem", "stage_1", "stage_2", "stage_3"]
    assert b.image_preprocessing == "affine"
    model = build_classifier(b, 3, HeadConfig(dropout=0.0), (32, 32))
    prep = model.get_layer("preprocessing")
    x = np.full((1, 32, 32, 3), 255.0, "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(prep(x))[0, 0, 0], [0.5, 0.6, 0.7],
                               rtol=1e-6)
    assert any("image converter" in n for n in b.notes)


def test_keras_hub_text_preset_without_preprocessor_is_a_clear_error(tmp_path):
    import keras_hub

    folder = tmp_path / "bare"
    keras_hub.models.BertBackbone(vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4,
                                  intermediate_dim=8, max_sequence_length=8).save_to_preset(str(folder))
    with pytest.raises(BackboneError, match="no text classifier preprocessor"):
        load_backbone(BackboneConfig(spec=f"keras_hub:{folder}"))


def test_keras_hub_image_preset_every_command(tmp_path, resnet_preset, image_folder):
    """train (head on the cache, then top:1), evaluate, predict, export, inspect: all from the
    preset folder."""
    import json

    from helpers import image_recipe, write_recipe

    recipe = image_recipe(tmp_path, image_folder, tmp_path / "unused.keras")
    recipe["backbone"] = {"spec": f"keras_hub:{resnet_preset}"}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = invoke("train", path, "--set", "train.verbose=epoch")
    assert result.exit_code == 0, result.output
    assert "feature cache: frozen part run once" in result.output
    run = tmp_path / "runs" / "img"
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["epochs_run"] for s in metrics["stages"]] == [2, 1]

    result = invoke("evaluate", run)
    assert result.exit_code == 0, result.output
    result = invoke("predict", run, next(image_folder.glob("red/*.png")))
    assert result.exit_code == 0, result.output
    assert any(c in result.output for c in ("red", "green", "blue")), result.output
    result = invoke("export", run, "--format", "savedmodel")
    assert result.exit_code == 0, result.output
    assert "verified" in result.output.lower(), result.output
    result = invoke("inspect", f"keras_hub:{resnet_preset}", "--image-size", "32")
    assert result.exit_code == 0, result.output
    assert "image backbone, 4 layer groups" in result.output


def test_keras_hub_vit_preset_groups_its_blocks(tmp_path):
    """KerasHub's ViT keeps its blocks inside one `ViTEncoder` layer: they still become one
    group each, and training one trains only its weights."""
    import keras_hub

    from tftune.model.heads import build_classifier, head_layers
    from tftune.training.trainable import selected_groups, set_trainable

    folder = tmp_path / "vit"
    keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2,
                                 num_heads=2, hidden_dim=8, mlp_dim=16).save_to_preset(str(folder))
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5,
                                       offset=-1.0).save_to_preset(str(folder))
    b = load_backbone(BackboneConfig(spec=f"keras_hub:{folder}"), (32, 32))
    assert [g.name for g in b.groups] == ["embeddings", "block_0", "block_1", "final"]
    model = build_classifier(b, 2, HeadConfig(dropout=0.0), (32, 32))
    set_trainable(b.model, b.groups, selected_groups("block_1", b.groups), head_layers(model))
    trained = {v.path for v in model.trainable_weights}
    assert trained and all("transformer_block_2" in p or p.startswith("head_") for p in trained)
    assert any("transformer_block_2" in p for p in trained)
    with pytest.raises(BackboneError, match=r"takes \[32, 32\] images only.*data.image_size"):
        load_backbone(BackboneConfig(spec=f"keras_hub:{folder}"), (48, 48))
