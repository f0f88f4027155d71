"""`hf:<folder>` of a timm checkpoint (timm's config.json + model.safetensors), converted by
KerasHub's own timm converters; the folder is written here, in timm's layout, without timm.

The smallest timm network KerasHub converts by its state-dict names is `resnet18` (its
converter fixes the widths): 11M parameters, still quick at 32 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_line_error, image_recipe, invoke, write_recipe
from tftune.config import BackboneConfig, HeadConfig
from tftune.errors import BackboneError
from tftune.model.backbones import load_backbone

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_timm_resnet18(folder: Path, seed: int = 0, pretrained_cfg: bool = True) -> dict:
    """A Hugging Face folder as timm writes `resnet18` (`push_to_hf_hub`): config.json with
    `architecture` and `pretrained_cfg`, and model.safetensors with timm's parameter names
    and PyTorch layouts (conv kernels [out, in, h, w]; BatchNorm weight, bias, running_mean,
    running_var, num_batches_tracked; the `fc` classifier). Returns the tensors."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}

    def conv(name, out, inp, k):
        tensors[f"{name}.weight"] = (rng.standard_normal((out, inp, k, k))
                                     * np.sqrt(2.0 / (inp * k * k))).astype("float32")

    def bn(name, c):
        tensors[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype("float32")
        tensors[f"{name}.bias"] = (rng.standard_normal(c) * 0.1).astype("float32")
        tensors[f"{name}.running_mean"] = (rng.standard_normal(c) * 0.1).astype("float32")
        tensors[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype("float32")
        tensors[f"{name}.num_batches_tracked"] = np.array(100, dtype="int64")

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inp = 64
    for s, out in enumerate([64, 128, 256, 512]):
        for b in range(2):  # BasicBlocks
            p = f"layer{s + 1}.{b}"
            conv(f"{p}.conv1", out, inp if b == 0 else out, 3)
            bn(f"{p}.bn1", out)
            conv(f"{p}.conv2", out, out, 3)
            bn(f"{p}.bn2", out)
            if b == 0 and s > 0:
                conv(f"{p}.downsample.0", out, inp, 1)
                bn(f"{p}.downsample.1", out)
        inp = out
    tensors["fc.weight"] = (rng.standard_normal((1000, 512)) * 0.01).astype("float32")
    tensors["fc.bias"] = np.zeros(1000, "float32")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"architecture": "resnet18", "num_classes": 1000, "num_features": 512,
              "global_pool": "avg"}
    if pretrained_cfg:
        config["pretrained_cfg"] = {
            "tag": "a1_in1k", "custom_load": False, "input_size": [3, 224, 224],
            "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": 0.95,
            "crop_mode": "center", "mean": list(MEAN), "std": list(STD), "num_classes": 1000,
            "pool_size": [7, 7], "first_conv": "conv1", "classifier": "fc"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return tensors


@pytest.fixture(scope="module")
def timm_resnet(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("timm") / "resnet18.a1_in1k"
    return folder, write_timm_resnet18(folder)


def test_timm_folder_loads_through_keras_hub(timm_resnet, capsys):
    import keras

    from tftune.model.heads import build_classifier

    folder, tensors = timm_resnet
    b = load_backbone(BackboneConfig(spec=f"hf:{folder}"), (32, 32))
    assert b.modality == "image" and type(b.model).__name__ == "ResNetBackbone"
    assert "porting" not in capsys.readouterr().out  # the converter's per-weight prints
    # CNN stages by resolution at 32 px: stem (conv1 at 16 px), then layer1..layer4 (8..1 px).
    assert [g.name for g in b.groups] == ["stem", "stage_1", "stage_2", "stage_3", "stage_4"]
    assert [l.name for l in b.groups[0].layers] == ["conv1_conv", "conv1_bn"]
    assert all(l.name.startswith("stack3_") for l in b.groups[-1].layers)
    # Converted weights: the stem conv (PyTorch [out, in, h, w] -> Keras [h, w, in, out]) and
    # the last BatchNorm's running variance are the safetensors values.
    np.testing.assert_array_equal(b.model.get_layer("conv1_conv").kernel.numpy(),
                                  np.transpose(tensors["conv1.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(b.model.get_layer("stack3_block1_2_bn").moving_variance.numpy(),
                                  tensors["layer4.1.bn2.running_var"])
    # Normalisation from pretrained_cfg's mean / std, inside the model: 0..255 pixels in.
    assert b.image_preprocessing == "affine"
    assert any("timm resnet18" in n for n in b.notes)
    model = build_classifier(b, 3, HeadConfig(dropout=0.0), (32, 32))
    pixels = np.full((1, 32, 32, 3), 255.0, "float32")
    got = keras.ops.convert_to_numpy(model.get_layer("preprocessing")(pixels))[0, 0, 0]
    np.testing.assert_allclose(got, (1.0 - np.array(MEAN)) / np.array(STD), rtol=1e-5)


def test_timm_folder_inspect(timm_resnet):
    folder, _ = timm_resnet
    result = invoke("inspect", f"hf:{folder}", "--image-size", "32")
    assert result.exit_code == 0, result.output
    assert "image backbone, 5 layer groups, 11,186,112 parameters" in result.output
    names = [line.split()[1] for line in result.output.splitlines() if line.strip().endswith("layers")]
    assert names == ["stem", "stage_1", "stage_2", "stage_3", "stage_4"]
    assert "timm resnet18 checkpoint" in result.output


def test_timm_folder_staged_run(tmp_path, timm_resnet, image_folder):
    """head (on cached features), then top:1 (layer4) from a timm folder; the run's model
    starts from the converted weights and only layer4 and the head change in stage 2."""
    import keras

    folder, tensors = timm_resnet
    recipe = image_recipe(tmp_path, image_folder, tmp_path / "unused.keras")
    recipe["backbone"] = {"spec": f"hf:{folder}"}
    result = invoke("train", write_recipe(tmp_path / "r.yaml", recipe), "--set", "train.verbose=epoch")
    assert result.exit_code == 0, result.output
    assert "feature cache: frozen part run once" in result.output
    run = tmp_path / "runs" / "img"
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["epochs_run"] for s in metrics["stages"]] == [2, 1]
    trained = keras.saving.load_model(str(run / "model.keras"), compile=False)
    backbone = next(l for l in trained.layers if type(l).__name__ == "ResNetBackbone")
    np.testing.assert_array_equal(backbone.get_layer("conv1_conv").kernel.numpy(),
                                  np.transpose(tensors["conv1.weight"], (2, 3, 1, 0)))
    assert not np.array_equal(backbone.get_layer("stack3_block1_2_conv").kernel.numpy(),
                              np.transpose(tensors["layer4.1.conv2.weight"], (2, 3, 1, 0)))


def test_timm_folder_without_pretrained_cfg(tmp_path):
    folder = tmp_path / "bare"
    write_timm_resnet18(folder, pretrained_cfg=False)
    with pytest.raises(BackboneError, match="no pretrained_cfg with input_size, mean and std"):
        load_backbone(BackboneConfig(spec=f"hf:{folder}"), (32, 32))


def test_timm_architecture_keras_hub_does_not_convert(tmp_path):
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"architecture": "vit_tiny_patch16_224", "num_classes": 1000,
         "pretrained_cfg": {"input_size": [3, 224, 224], "mean": list(MEAN), "std": list(STD)}}))
    result = invoke("inspect", f"hf:{folder}")
    assert_one_line_error(result, "timm checkpoint", "vit_tiny_patch16_224", "resnet")


def test_hf_folder_that_is_neither_transformers_nor_timm(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(BackboneError, match="nor a timm one"):
        load_backbone(BackboneConfig(spec=f"hf:{folder}"))
