"""Parameter-efficient stages (`stages.N.peft`): on a tiny KerasHub BERT and a
keras.applications MobileNetV2, each mode trains exactly the variables it says (every other
backbone variable stays bit-identical), with the trainable count it says and the feature
cache under the frozen bottom; LoRA adapters merge into the kernels exactly (a later full
stage, `tftune.load`), are stored on their own and come back onto the base; a run with a
LoRA stage resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tftune.config import config_from_dict
from tftune.errors import ConfigError
from tftune.model import adapters, peft
from tftune.training.plan import StagePlan
from tftune.training.runner import train

pytestmark = pytest.mark.usefixtures("eager")

MODES = ("none", "lora", "lora_bias", "lora_norm", "bitfit", "norm")
BN_STATS = ("moving_mean", "moving_variance")


def category(layer, v) -> str:
    """What a backbone variable is, from its layer and name (independently of any flag)."""
    if peft.is_adapter(v):
        return "adapter"
    if peft.is_norm(layer):
        return {"gamma": "scale", "beta": "shift"}.get(v.name, "stat" if v.name in BN_STATS else "other")
    return "bias" if v.name == "bias" else "other"


# What each mode may change inside the trained groups (under train_bn: false a BatchNorm
# layer whose scale / shift train keeps its moving statistics); `none` with train_bn: false
# leaves BatchNorm alone.
MAY_CHANGE = {
    "lora": {"adapter"},
    "lora_bias": {"adapter", "bias", "shift"},
    "lora_norm": {"adapter", "scale", "shift"},
    "bitfit": {"bias", "shift"},
    "norm": {"scale", "shift"},
}
# ... and what it trains (counted in the trainable parameters).
TRAINS = {
    "lora": {"adapter"},
    "lora_bias": {"adapter", "bias", "shift"},
    "lora_norm": {"adapter", "scale", "shift"},
    "bitfit": {"bias", "shift"},
    "norm": {"scale", "shift"},
}


def variables_by_layer(layers):
    for top in layers:
        for layer in peft.all_layers(top):
            for v in layer._trainable_variables + layer._non_trainable_variables:
                yield layer, v


class Spy:
    """Records, at the PEFT stage's `StagePlan.apply`, the backbone's values before and the
    trainable count after (the real apply runs in between)."""

    def __init__(self, monkeypatch):
        self.before, self.trainable, self.plan, self.backbone = {}, None, None, None
        original = StagePlan.apply

        def apply(plan, backbone, head, always_frozen=()):
            if plan.index == plan.total - 1:
                self.plan, self.backbone = plan, backbone
                self.before = {id(v): np.array(v.numpy()) for v in backbone.model.weights}
            original(plan, backbone, head, always_frozen)
            if plan.index == plan.total - 1:
                self.trainable = sum(int(np.prod(v.shape)) for v in backbone.model.trainable_weights)
                self.head = [l for l in head]

        monkeypatch.setattr(StagePlan, "apply", apply)


def around_stage(monkeypatch, index: int, before=None, after=None) -> None:
    """Calls `before(model)` with the run's model just before stage `index` is set up, and
    `after(model, plan, backbone)` just after (each time it is: a resumed run sets it up
    again)."""
    from tftune.training import prepare

    model, real_prepare, real_apply = {}, prepare.prepare_run, StagePlan.apply

    def spy_prepare(*a, **k):
        prep = real_prepare(*a, **k)
        model["m"] = prep.model
        return prep

    def apply(plan, backbone, head, always_frozen=()):
        if plan.index == index and before is not None:
            before(model["m"])
        real_apply(plan, backbone, head, always_frozen)
        if plan.index == index and after is not None:
            after(model["m"], plan, backbone)

    monkeypatch.setattr(StagePlan, "apply", apply)
    monkeypatch.setattr("tftune.training.runner.prepare_run", spy_prepare)


def image_recipe(folder, out, mode, name="cnn", **extra) -> dict:
    return {
        "recipe": "image_classification", "name": name, "output_dir": str(out),
        "data": {"source": "folder", "path": str(folder), "image_size": [32, 32]},
        "backbone": {"spec": "keras_applications:MobileNetV2", "weights": "none"},
        "head": {"dropout": 0.0},
        "stages": [{"name": "peft", "train": "top:1", "epochs": 1, "learning_rate": 0.05,
                    "peft": mode, "lora": {"rank": 2}, **extra}],
        "train": {"batch_size": 8, "verbose": "quiet"},
    }


def text_recipe(csv_path, preset, out, mode, name="txt", stages=None) -> dict:
    return {
        "recipe": "text_classification", "name": name, "output_dir": str(out),
        "data": {"source": "csv", "path": str(csv_path), "val_fraction": 0.2, "test_fraction": 0.2},
        "backbone": {"spec": f"keras_hub:{preset}", "sequence_length": 16},
        "head": {"dropout": 0.0},
        "stages": stages or [{"name": "peft", "train": "top:1", "epochs": 1,
                              "learning_rate": 0.05, "peft": mode, "lora": {"rank": 2}}],
        "train": {"batch_size": 8, "verbose": "quiet"},
    }


def check_mode(spy: Spy, mode: str, lines: list[str]) -> None:
    plan, bb = spy.plan, spy.backbone.model
    trained = [plan.groups[i] for i in plan.train_indices]
    in_groups = {id(v) for _, v in variables_by_layer([l for g in trained for l in g.layers])}
    targets = {id(l) for l in plan.targets}
    changed, expected_count = {}, 0
    for layer, v in variables_by_layer([bb]):
        if id(v) in spy.before:
            moved = not np.array_equal(spy.before[id(v)], v.numpy())
        else:  # an adapter this stage created: B starts at zero
            assert peft.is_adapter(v) and id(layer) in targets, v.path
            moved = bool(np.any(v.numpy() != 0)) if v.name.endswith("_b") else True
        cat = category(layer, v)
        if mode == "none":
            may = id(v) in in_groups and not (peft.is_norm(layer) and type(layer).__name__ == "BatchNormalization")
        else:
            may = id(v) in in_groups and cat in MAY_CHANGE[mode]
            if cat == "adapter":
                may = may and id(layer) in targets
            if id(v) in in_groups and (cat in TRAINS[mode] and (cat != "adapter" or id(layer) in targets)):
                expected_count += int(np.prod(v.shape))
        if moved:
            assert may, f"{mode}: {v.path} ({cat}) changed"
            changed.setdefault(cat, []).append(v.path)
    if mode != "none":
        assert spy.trainable == expected_count, (mode, spy.trainable, expected_count)
        for cat in TRAINS[mode] & {"adapter", "scale", "shift", "bias"}:
            if cat != "bias" or any(category(l, v) == "bias" for l, v in variables_by_layer(
                    [l for g in trained for l in g.layers])):
                assert cat in changed, (mode, cat, sorted(changed))
    else:
        assert "other" in changed
    banner = next(l for l in lines if l.startswith("== Stage"))
    assert f"{spy.trainable + sum(int(np.prod(v.shape)) for l in spy.head for v in l.trainable_weights):,} trainable params" in banner
    if mode != "none":
        assert f"({mode}" in banner
    # the stage's bottom is frozen: trained on the cached prefix
    assert any(l.startswith("   feature cache: frozen part run once") for l in lines), lines


@pytest.mark.parametrize("mode", MODES)
def test_cnn_modes_train_only_what_they_say(tmp_path, image_folder, monkeypatch, mode):
    spy = Spy(monkeypatch)
    lines: list[str] = []
    result = train(config_from_dict(image_recipe(image_folder, tmp_path, mode)), echo=lines.append)
    check_mode(spy, mode, lines)
    assert (result.run_dir / peft.ADAPTERS_FILE).is_file() == (mode != "none")


def test_bitfit_with_train_bn_moves_the_batchnorm_statistics(tmp_path, image_folder, monkeypatch):
    spy = Spy(monkeypatch)
    train(config_from_dict({**image_recipe(image_folder, tmp_path, "bitfit"),
                            "backbone": {"spec": "keras_applications:MobileNetV2",
                                         "weights": "none", "train_bn": True}}),
          echo=lambda _: None)
    trained = [spy.plan.groups[i] for i in spy.plan.train_indices]
    stats = [v for l, v in variables_by_layer([l for g in trained for l in g.layers])
             if v.name in BN_STATS]
    assert stats and any(not np.array_equal(spy.before[id(v)], v.numpy()) for v in stats)


def test_batchnorm_shift_trains_on_moving_statistics():
    import keras
    import tensorflow as tf

    bn = keras.layers.BatchNormalization()
    x = tf.random.stateless_normal((16, 4), seed=(1, 2)) * 3.0 + 5.0
    bn.build(x.shape)
    peft.use_moving_statistics(bn, True)
    with tf.GradientTape() as tape:
        y = bn(x, training=True)
        loss = tf.reduce_sum(y * tf.range(4, dtype=tf.float32))
    grads = tape.gradient(loss, [bn.gamma, bn.beta])
    np.testing.assert_allclose(y.numpy(), bn(x, training=False).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.zeros(4))  # no update
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)
    peft.use_moving_statistics(bn, False)  # Keras's own behaviour back: batch statistics
    bn(x, training=True)
    assert np.any(bn.moving_mean.numpy() != 0)


@pytest.mark.parametrize("make, shape", [
    (lambda k: k.layers.Dense(6, activation="gelu"), (3, 4, 5)),
    (lambda k: k.layers.EinsumDense("abc,cde->abde", output_shape=(None, 3, 4), bias_axes="de"), (2, 7, 5)),
    (lambda k: k.layers.EinsumDense("abcd,cde->abe", output_shape=(None, 6), bias_axes="e"), (2, 7, 3, 4)),
])
def test_factored_lora_computes_what_keras_lora_computes(make, shape):
    """x W + s (x A) B against Keras's x (W + s A B): outputs and every gradient."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    ours, keras_own = make(keras), make(keras)
    for layer in (ours, keras_own):
        layer.build(shape)
        layer.enable_lora(2, lora_alpha=4.0)
    weights = [rng.normal(size=v.shape).astype("float32") for v in keras_own.weights]
    ours.set_weights(weights)
    keras_own.set_weights(weights)
    assert peft.factor(ours) and not peft.factor(keras.layers.Dense(2))
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    out, grads = [], []
    for layer in (ours, keras_own):
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        out.append(y.numpy())
        grads.append(tape.gradient(loss, layer.trainable_variables))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4 * np.abs(b.numpy()).max())


@pytest.mark.parametrize("mode", MODES)
def test_bert_modes_train_only_what_they_say(tmp_path, text_csv, tiny_bert_preset, monkeypatch, mode):
    spy = Spy(monkeypatch)
    lines: list[str] = []
    train(config_from_dict(text_recipe(text_csv, tiny_bert_preset, tmp_path, mode)), echo=lines.append)
    check_mode(spy, mode, lines)
    if mode.startswith("lora"):  # KerasHub's defaults: the attention query and value
        assert sorted(l.name for l in spy.plan.targets) == ["query", "value"]


def test_head_lora_all_merges_the_adapters_then_trains_the_kernels(tmp_path, text_csv,
                                                                   tiny_bert_preset, monkeypatch):
    """head -> lora (all groups) -> all: at the start of the last stage the adapters merge
    into the kernels (the model computes the same), the kernels train, the adapters do not."""
    import tftune

    seen = {}

    def before(model):
        seen["before"] = np.asarray(model({k: np.asarray(v) for k, v in SAMPLE.items()}))

    def after(model, plan, backbone):
        out = np.asarray(model({k: np.asarray(v) for k, v in SAMPLE.items()}))
        seen["diff"] = float(np.max(np.abs(seen["before"] - out)))
        lora = [l for l in peft.all_layers(backbone.model) if getattr(l, "lora_enabled", False)]
        seen["b_zero"] = all(not np.any(l.lora_kernel_b.numpy()) for l in lora)
        seen["trainable"] = {v.path for v in backbone.model.trainable_weights}
        seen["lora_layers"] = [l.path for l in lora]

    around_stage(monkeypatch, 2, before, after)
    import keras

    SAMPLE = {"token_ids": np.array([[2, 5, 6, 20, 3, 0]]), "padding_mask": np.array([[1, 1, 1, 1, 1, 0]]),
              "segment_ids": np.zeros((1, 6), "int32")}

    stages = [{"name": "head", "train": "head", "epochs": 1, "learning_rate": 0.05},
              {"name": "lora", "train": "all", "epochs": 1, "learning_rate": 0.05, "peft": "lora"},
              {"name": "all", "train": "all", "epochs": 1, "learning_rate": 1e-3}]
    lines: list[str] = []
    result = train(config_from_dict(text_recipe(text_csv, tiny_bert_preset, tmp_path, "", stages=stages)),
                   echo=lines.append)
    print("merge at the 'all' stage: max abs diff", seen["diff"])
    assert seen["diff"] < 1e-6 and seen["b_zero"]
    assert len(seen["lora_layers"]) == 4  # query and value of 2 blocks
    assert not any("lora_kernel" in p for p in seen["trainable"])
    assert {p.rsplit("/", 1)[0] for p in seen["trainable"] if p.endswith("/kernel")} >= set(seen["lora_layers"])
    # a full stage came after the LoRA one: no adapters file (the base kernels changed)
    assert not (result.run_dir / peft.ADAPTERS_FILE).exists()
    loaded = tftune.load(result.run_dir).model
    assert not adapters.has_lora(loaded) and not any("lora" in v.path for v in loaded.weights)
    diff = float(np.max(np.abs(np.asarray(loaded(SAMPLE)) - np.asarray(result.model(SAMPLE)))))
    print("tftune.load (merged) vs trained model: max abs diff", diff)
    assert diff < 1e-5


def test_adapters_stored_on_their_own_and_loaded_onto_the_base(tmp_path, text_csv, tiny_bert_preset):
    """A lora_bias run: model.keras loads merged (no LoRA) with the same predictions; the
    adapters file + the base preset rebuild the same model; adapters.json names the base."""
    import keras
    import tftune
    from tftune.config import BackboneConfig, HeadConfig
    from tftune.model.backbones import load_backbone
    from tftune.model.heads import build_classifier

    cfg = config_from_dict(text_recipe(text_csv, tiny_bert_preset, tmp_path, "lora_bias"))
    result = train(cfg, echo=lambda _: None)
    run = result.run_dir
    sample = {"token_ids": np.array([[2, 7, 9, 22, 3, 0, 0]]),
              "padding_mask": np.array([[1, 1, 1, 1, 1, 0, 0]]), "segment_ids": np.zeros((1, 7), "int32")}
    expected = np.asarray(result.model(sample))

    merged = tftune.load(run).model
    assert not adapters.has_lora(merged)
    diff = float(np.max(np.abs(np.asarray(merged(sample)) - expected)))
    print("merged model.keras vs unmerged model: max abs diff", diff)
    assert diff < 1e-5

    info = json.loads((run / peft.ADAPTERS_INFO).read_text())
    assert info["base"]["spec"] == f"keras_hub:{tiny_bert_preset}"
    assert info["base"]["files"] and all(len(h) == 64 for h in info["base"]["files"].values())
    assert len(info["lora_layers"]) == 2  # the top block's query and value
    size, whole = (run / peft.ADAPTERS_FILE).stat().st_size, (run / "model.keras").stat().st_size
    assert size < whole

    backbone = load_backbone(BackboneConfig(spec=f"keras_hub:{tiny_bert_preset}", sequence_length=16))
    rebuilt = build_classifier(backbone, 2, HeadConfig(dropout=0.0))
    assert not np.allclose(np.asarray(rebuilt(sample)), expected)
    adapters.load_adapters(rebuilt, backbone.model, run)
    diff = float(np.max(np.abs(np.asarray(rebuilt(sample)) - expected)))
    print("base + adapters vs trained model: max abs diff", diff)
    assert diff < 1e-6
    plain = adapters.merge_lora(rebuilt)
    assert not adapters.has_lora(plain) and isinstance(plain, keras.Model)
    assert float(np.max(np.abs(np.asarray(plain(sample)) - expected))) < 1e-5


@pytest.mark.parametrize("stage, match", [
    ({"train": "head", "peft": "lora"}, r"stages.0.peft.*trains none"),
    ({"train": "all", "peft": "lora", "lora": {"rank": 0}}, r"stages.0.lora.rank.*>= 1"),
    ({"train": "all", "peft": "lora", "lora": {"alpha": 0}}, r"stages.0.lora.alpha.*> 0"),
    ({"train": "all", "peft": "lora", "lora": {"targets": ["("]}}, r"not a regular expression"),
    ({"train": "all", "peft": "lora", "lora": {"targets": ["nothing_here"]}}, r"match no Dense.*block1_conv"),
    ({"train": "all", "peft": "lora", "peft_base": "int8"}, r"stages.0.peft_base.*not convolutions"),
    ({"train": "all", "peft_base": "int8"}, r"stages.0.peft_base.*peft: none"),
])
def test_peft_config_errors(make_tiny_cnn, stage, match):
    from tftune.config import BackboneConfig
    from tftune.model.backbones import from_keras_model

    bb = from_keras_model(make_tiny_cnn(32), BackboneConfig())
    with pytest.raises(ConfigError, match=match):  # rank and alpha: when the recipe loads
        StagePlan.all(config_from_dict({"stages": [stage]}), bb.groups)


@pytest.mark.parametrize("stages, match", [
    ([{"train": "all", "peft": "lora"}, {"train": "all", "peft": "lora", "peft_base": "int8"}],
     r"stages.1.peft_base.*stage 0 already put LoRA adapters"),
    ([{"train": "all", "peft": "bitfit", "peft_base": "int8"}, {"train": "top:1"}],
     r"stages.1.peft.*quantized them"),
])
def test_int8_base_stage_order_errors(tiny_bert_preset, stages, match):
    from tftune.config import BackboneConfig
    from tftune.model.backbones import load_backbone

    bb = load_backbone(BackboneConfig(spec=f"keras_hub:{tiny_bert_preset}", sequence_length=16))
    StagePlan.all(config_from_dict({"stages": stages[:1]}), bb.groups)  # alone: fine
    with pytest.raises(ConfigError, match=match):
        StagePlan.all(config_from_dict({"stages": stages}), bb.groups)


def test_lora_targets_pick_layers_by_name_or_path(make_tiny_cnn):
    from tftune.config import BackboneConfig
    from tftune.model.backbones import from_keras_model

    bb = from_keras_model(make_tiny_cnn(32), BackboneConfig())
    plan = StagePlan.all(config_from_dict({"stages": [
        {"train": "all", "peft": "lora", "lora": {"targets": ["block.*_conv"]}}]}), bb.groups)[0]
    assert [l.name for l in plan.targets] == ["block1_conv", "block2_conv"]
    plan = StagePlan.all(config_from_dict({"stages": [
        {"train": "top:1", "peft": "lora"}]}), bb.groups)[0]
    assert [l.name for l in plan.targets] == ["block2_conv"]  # default: the groups' convs


# ------------------------------------------------------------------------------------------
# resume: a LoRA stage's adapters are re-created before the checkpoint is restored


def lora_resume_recipe(folder, cnn, out, name="r") -> dict:
    """test_resume's recipe with head -> lora (top:2, warmup + cosine) -> full top:1 (which
    merges the adapters first)."""
    from helpers import resume_recipe

    return {**resume_recipe(folder, cnn, out, name), "stages": [
        {"name": "head", "train": "head", "epochs": 1, "learning_rate": 0.05},
        {"name": "lora", "train": "top:2", "epochs": 2, "learning_rate": 0.02, "peft": "lora",
         "lora": {"rank": 2}, "warmup": 2, "schedule": "cosine",
         "early_stopping": {"monitor": "val_loss", "patience": 5}},
        {"name": "full", "train": "top:1", "epochs": 1, "learning_rate": 1e-3},
    ]}


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory):
    """The uninterrupted head -> lora -> full run (eager) and its inputs: 36 coloured
    images and the tiny CNN saved as a `keras:` file."""
    from helpers import build_tiny_cnn, make_image_folder, train_eagerly

    root = tmp_path_factory.mktemp("peft_resume")
    cnn = root / "cnn.keras"
    build_tiny_cnn(32).save(str(cnn))  # a fixed seed is not needed: both runs read the file
    folder = make_image_folder(root / "images")
    return folder, cnn, train_eagerly(lora_resume_recipe(folder, cnn, root / "ref"))


@pytest.mark.parametrize("event, n, where", [
    ("step", 2, "stage 1/3 'head', epoch 1, step 4"),  # the cached head: 4 steps, one call
    ("step", 6, "stage 2/3 'lora', epoch 1, step 2"),
    ("epoch_end", 2, "stage 2/3 'lora', epoch 2, start"),
    ("stage_end", 2, "stage 3/3 'full', epoch 1, start"),
    ("step", 14, "stage 3/3 'full', epoch 1, step 2"),
], ids=["before-lora", "mid-lora", "lora-epoch-end", "after-lora", "mid-full"])
def test_sigterm_in_a_lora_run_then_resume_equals_the_uninterrupted_run(
        tmp_path, lora_reference, monkeypatch, event, n, where):
    from helpers import assert_same_run, sigterm_at
    from tftune.runtime.preemption import Preempted

    folder, cnn, reference = lora_reference
    cfg = config_from_dict(lora_resume_recipe(folder, cnn, tmp_path))
    sigterm_at(monkeypatch, event, n)
    with pytest.raises(Preempted, match=f"stopped at {where} with a checkpoint"):
        train(cfg, echo=lambda _: None)
    monkeypatch.undo()
    lines: list[str] = []
    resumed = train(cfg, resume=True, echo=lines.append)
    assert any(l.startswith("Resuming from") and l.endswith(where) for l in lines), lines
    assert_same_run(resumed, reference, where)


def test_keep_best_stage_from_before_the_adapters_existed(tmp_path, lora_reference, monkeypatch):
    """head (best) -> a LoRA stage that does worse: the head stage's weights come back, the
    adapters created since change nothing (B = 0); the same after a resume past the end."""
    from helpers import max_weight_difference, sigterm_at
    from tftune.runtime.preemption import Preempted

    folder, cnn, _ = lora_reference
    recipe = lora_resume_recipe(folder, cnn, tmp_path, name="k")
    recipe["head"]["dropout"] = 0.0
    recipe["stages"] = [
        {"name": "head", "train": "head", "epochs": 8, "learning_rate": 0.3},
        {"name": "lora", "train": "top:2", "epochs": 1, "learning_rate": 1.0, "peft": "lora"},
    ]
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    seen = {}

    def before_stage_1(model):
        if "head_out" not in seen:
            seen["head_out"] = np.asarray(model(images))

    around_stage(monkeypatch, 1, before=before_stage_1)
    lines: list[str] = []
    result = train(config_from_dict(recipe), echo=lines.append)
    assert any(l.startswith("The last stage did not beat stage 1") for l in lines), lines
    assert np.max(np.abs(np.asarray(result.model(images)) - seen["head_out"])) == 0.0
    lora = [l for l in peft.all_layers(result.model) if getattr(l, "lora_enabled", False)]
    assert lora and all(not np.any(l.lora_kernel_b.numpy()) for l in lora)

    monkeypatch.undo()
    recipe["output_dir"] = str(tmp_path / "cut")
    sigterm_at(monkeypatch, "stage_end", 2)
    with pytest.raises(Preempted, match="after the last stage"):
        train(config_from_dict(recipe), echo=lambda _: None)
    monkeypatch.undo()
    resumed = train(config_from_dict(recipe), resume=True, echo=lambda _: None)
    assert max_weight_difference(resumed.model.get_weights(), result.model.get_weights()) == 0.0


def test_layer_decay_scales_the_adapters_by_group(make_tiny_cnn):
    from tftune.config import BackboneConfig, HeadConfig
    from tftune.model.backbones import from_keras_model
    from tftune.model.heads import build_classifier, head_layers

    bb = from_keras_model(make_tiny_cnn(32), BackboneConfig())
    model = build_classifier(bb, 3, HeadConfig(dropout=0.0), (32, 32))
    cfg = config_from_dict({"stages": [{"train": "top:2", "peft": "lora_bias", "layer_decay": 0.5,
                                        "lora": {"rank": 2}}]})
    plan = StagePlan.all(cfg, bb.groups)[0]
    plan.apply(bb, head_layers(model))
    multipliers = plan.optimizer(4).lr_multipliers
    assert multipliers == {
        "block1_conv/lora_kernel_a": 0.25, "block1_conv/lora_kernel_b": 0.25,
        "block1_bn/beta": 0.25,
        "block2_conv/lora_kernel_a": 0.5, "block2_conv/lora_kernel_b": 0.5,
        "block2_bn/beta": 0.5,
    }
    assert {v.path for v in model.trainable_weights} == set(multipliers) | {
        "head_classifier/kernel", "head_classifier/bias"}


def test_savedmodel_of_a_lora_run_has_no_lora_and_matches_the_unmerged_model(tmp_path, lora_reference):
    """`tftune export` (through `FinishedRun.load_model`) exports the merged model: its
    SavedModel, called in a fresh process, matches the unmerged trained model."""
    import tensorflow as tf

    from tftune.export import call_savedmodel_in_fresh_process, export
    from tftune.inference.predictor import encode_png
    from tftune.rundir.reader import open_run

    folder, cnn, _ = lora_reference
    recipe = lora_resume_recipe(folder, cnn, tmp_path, name="x")
    recipe["stages"] = recipe["stages"][:2]  # head -> lora: the adapters stay unmerged
    result = train(config_from_dict(recipe), echo=lambda _: None)
    adapted = [l for l in peft.all_layers(result.model) if getattr(l, "lora_enabled", False)]
    assert len(adapted) == 2 and all(np.any(l.lora_kernel_b.numpy()) for l in adapted)
    unmerged = open_run(result.run_dir).load_model(merge=False)
    assert adapters.has_lora(unmerged)
    out = export(result.run_dir, "savedmodel", samples=6, echo=lambda _: None)
    saved = [k for k, _ in tf.train.list_variables(str(out.artefact / "variables" / "variables"))
             if k.startswith("weights/")]
    merged = open_run(result.run_dir).load_model()
    assert not adapters.has_lora(merged)
    # the SavedModel holds the merged model's variables: none of the adapters
    assert len(saved) == len(merged.variables) == len(unmerged.variables) - 4  # A, B of 2 convs
    pixels = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    got, _ = call_savedmodel_in_fresh_process(out.artefact, "image", [encode_png(p) for p in pixels])
    for name, model in (("trained", result.model), ("model.keras unmerged", unmerged)):
        diff = float(np.max(np.abs(got - np.asarray(model(pixels.astype("float32"))))))
        print(f"merged SavedModel (fresh process) vs {name} model: max abs diff {diff:.2e}")
        assert diff < 1e-5


def test_bert_int8_base_trains_only_the_adapters_and_saves_a_float_model(
        tmp_path, text_csv, tiny_bert_preset, monkeypatch):
    """peft_base: int8 + lora: the backbone's Dense / EinsumDense kernels become int8
    (Keras's quantize), only the adapters of the query / value projections train (every int8
    kernel, scale and other variable stays bit-identical); model.keras is the float model
    (dequantized kernels + merged adapters, no LoRA or int8 left), and the adapters file on
    the base, re-quantized, rebuilds it."""
    import tftune
    from tftune.export import export

    seen = {}
    original = StagePlan.apply

    def apply(plan, backbone, head, always_frozen=()):
        original(plan, backbone, head, always_frozen)
        seen["backbone"] = backbone.model
        seen["after_apply"] = {v.path: np.array(v.numpy()) for v in backbone.model.weights}
        seen["trainable"] = sum(int(np.prod(v.shape)) for v in backbone.model.trainable_weights)
        seen["targets"] = sorted(l.name for l in plan.targets)
        seen["in_groups"] = [l for l in peft._group_layers(plan.groups) if peft.quantizable(l)]

    monkeypatch.setattr(StagePlan, "apply", apply)
    recipe = text_recipe(text_csv, tiny_bert_preset, tmp_path, "lora")
    recipe["stages"][0].update(peft_base="int8", train="all")
    lines: list[str] = []
    result = train(config_from_dict(recipe), echo=lines.append)
    bb = seen["backbone"]
    quantized = [l for l in peft.all_layers(bb) if peft.is_int8(l)]
    assert quantized and all(peft.is_int8(l) for l in seen["in_groups"])  # (not the unused pooler)
    assert all(l._kernel.dtype == "int8" for l in quantized)
    assert seen["targets"] == ["query", "query", "value", "value"]
    adapter_vars = [v for l in peft.all_layers(bb) for v in peft.adapter_variables(l)]
    assert seen["trainable"] == sum(int(np.prod(v.shape)) for v in adapter_vars)
    for v in bb.weights:
        moved = not np.array_equal(seen["after_apply"][v.path], v.numpy())
        assert moved == (v.name == "lora_kernel_b") or (moved and peft.is_adapter(v)), v.path
    assert all(np.any(l.lora_kernel_b.numpy()) for l in peft.all_layers(bb)
               if getattr(l, "lora_enabled", False))

    info = json.loads((result.run_dir / peft.ADAPTERS_INFO).read_text())
    assert info["base"]["quantization"] == {"mode": "int8", "layers": [l.path for l in quantized]}
    sample = {"token_ids": np.array([[2, 7, 9, 22, 3, 0, 0]]),
              "padding_mask": np.array([[1, 1, 1, 1, 1, 0, 0]]), "segment_ids": np.zeros((1, 7), "int32")}
    trained = np.asarray(result.model(sample))
    saved = tftune.load(result.run_dir).model
    assert not adapters.has_lora(saved) and not adapters.has_int8(saved)
    assert all(v.dtype == "float32" for v in saved.weights)
    diff = float(np.max(np.abs(np.asarray(saved(sample)) - trained)))
    print("float model.keras vs the int8 model it trained as: max abs diff", diff)
    assert diff < 0.05  # the int8 layers also quantize their inputs; the float model does not
    rebuilt = tftune.load(result.run_dir, from_adapters=True).model
    diff = float(np.max(np.abs(np.asarray(rebuilt(sample)) - np.asarray(saved(sample)))))
    print("base re-quantized + adapters vs model.keras: max abs diff", diff)
    assert diff < 1e-6
    out = export(result.run_dir, "adapters", samples=6, echo=lambda _: None)
    print(f"adapters export of the int8 run: max abs diff {out.max_abs_diff:.2e}")
    assert out.max_abs_diff <= 1e-5 and (out.artefact / "preprocessor").is_dir()


def test_adapters_export_writes_them_alone_and_rebuilds_the_model(tmp_path, lora_reference):
    """`export --format adapters` of a head -> lora run: the adapters file, adapters.json
    (the base's spec and sha256), config.yaml and classes.json, a few percent of model.keras;
    the model rebuilt from the base + these adapters matches the run's Keras model; a
    changed base and a run without adapters are refused."""
    import shutil

    import tftune
    from tftune.errors import TftuneError
    from tftune.export import ExportVerificationError, export
    from tftune.rundir import MODEL_FILE

    folder, cnn, _ = lora_reference
    base = tmp_path / "base.keras"
    shutil.copy2(cnn, base)
    recipe = lora_resume_recipe(folder, base, tmp_path, name="a")
    recipe["stages"] = recipe["stages"][:2]  # head -> lora
    result = train(config_from_dict(recipe), echo=lambda _: None)
    lines: list[str] = []
    out = export(result.run_dir, "adapters", samples=6, echo=lines.append)
    files = sorted(p.name for p in out.out_dir.rglob("*") if p.is_file())
    assert files == sorted(["adapters.json", "adapters.weights.npz", "classes.json", "config.yaml",
                            "verification.json"]), files
    info = json.loads((out.artefact / peft.ADAPTERS_INFO).read_text())
    assert info["base"]["files"] == {"base.keras": __import__("hashlib").sha256(base.read_bytes()).hexdigest()}
    size = (out.artefact / peft.ADAPTERS_FILE).stat().st_size
    whole = (result.run_dir / MODEL_FILE).stat().st_size
    print(f"adapters export: {size} bytes = {100 * size / whole:.1f} % of model.keras ({whole} bytes); "
          f"rebuilt vs Keras model max abs diff {out.max_abs_diff:.2e}")
    assert size < whole / 2 and out.size_bytes < whole
    assert out.max_abs_diff <= 1e-5 and out.top1_agreement == 1.0
    assert any("% of model.keras" in note for note in out.notes) and lines

    pixels = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    rebuilt = tftune.load(result.run_dir, from_adapters=True).model
    assert not adapters.has_lora(rebuilt)
    diff = float(np.max(np.abs(np.asarray(rebuilt(pixels)) - np.asarray(result.model(pixels)))))
    print("tftune.load(from_adapters=True) vs the trained model: max abs diff", diff)
    assert 0 < np.max(np.abs(np.asarray(result.model(pixels)))) and diff < 1e-5

    import keras  # the base changes: the rebuild refuses it (sha256)
    model = keras.saving.load_model(str(base))
    model.layers[2].kernel.assign(model.layers[2].kernel * 2)
    model.save(str(base))
    with pytest.raises(TftuneError, match="changed since training"):
        export(result.run_dir, "adapters", samples=6, overwrite=True, echo=lambda _: None)

    recipe = lora_resume_recipe(folder, cnn, tmp_path, name="full")  # ends with a full stage
    full = train(config_from_dict(recipe), echo=lambda _: None)
    with pytest.raises(TftuneError, match="has no adapters.weights.npz") as e:
        export(full.run_dir, "adapters", samples=6, echo=lambda _: None)
    assert not isinstance(e.value, ExportVerificationError)


def test_sigterm_in_an_int8_lora_stage_then_resume_equals_the_uninterrupted_run(
        tmp_path, text_csv, tiny_bert_preset, monkeypatch):
    """head -> lora on an int8 base (2 epochs): SIGTERM inside the int8 stage, resume (the
    base is re-quantized and the adapters re-created before the checkpoint is restored)
    gives the uninterrupted run's weights, metrics and history, and the same model.keras."""
    import tftune
    from helpers import assert_same_run, max_weight_difference, sigterm_at
    from tftune.runtime.preemption import Preempted

    stages = [{"name": "head", "train": "head", "epochs": 1, "learning_rate": 0.05},
              {"name": "q", "train": "all", "epochs": 2, "learning_rate": 0.02, "peft": "lora_bias",
               "peft_base": "int8", "lora": {"rank": 2}}]

    def recipe(out):
        return config_from_dict(text_recipe(text_csv, tiny_bert_preset, out, "", stages=stages))

    reference = train(recipe(tmp_path / "ref"), echo=lambda _: None)
    cfg = recipe(tmp_path / "cut")
    sigterm_at(monkeypatch, "step", 7)  # a few steps into the int8 stage
    with pytest.raises(Preempted, match="stopped at stage 2/2 'q', epoch 1, step"):
        train(cfg, echo=lambda _: None)
    monkeypatch.undo()
    resumed = train(cfg, resume=True, echo=lambda _: None)
    assert adapters.has_int8(resumed.model)
    assert_same_run(resumed, reference, "int8 + lora_bias")
    a, b = tftune.load(resumed.run_dir).model, tftune.load(reference.run_dir).model
    assert max_weight_difference(a.get_weights(), b.get_weights()) < 1e-6


def test_keep_best_stage_from_before_the_int8_base(tmp_path, text_csv, tiny_bert_preset, monkeypatch):
    """head (best) -> an int8 LoRA stage that does worse: the head stage's weights come back
    onto the int8 model (its float kernels quantized again, the adapters at B = 0)."""
    seen = {}

    def before_stage_1(model):
        seen["before"] = {v.path: np.array(v.numpy()) for v in model.weights}

    around_stage(monkeypatch, 1, before=before_stage_1)
    stages = [{"name": "head", "train": "head", "epochs": 8, "learning_rate": 0.3},
              {"name": "q", "train": "all", "epochs": 1, "learning_rate": 3.0, "peft": "lora",
               "peft_base": "int8", "lora": {"rank": 2}}]
    lines: list[str] = []
    result = train(config_from_dict(text_recipe(text_csv, tiny_bert_preset, tmp_path, "", stages=stages)),
                   echo=lines.append)
    assert any(l.startswith("The last stage did not beat stage 1") for l in lines), lines
    model, before = result.model, seen["before"]
    quantized = [l for l in peft.all_layers(model) if peft.is_int8(l)]
    assert quantized
    for layer in quantized:
        kernel = peft.float_kernel(layer)  # B = 0: the dequantized kernel alone
        step = np.max(np.abs(before[layer._kernel.path])) / 127
        assert np.max(np.abs(kernel - before[layer._kernel.path])) <= step, layer.path
    assert all(not np.any(l.lora_kernel_b.numpy()) for l in peft.all_layers(model)
               if getattr(l, "lora_enabled", False))
    int8_paths = {l._kernel.path for l in quantized} | {l.kernel_scale.path for l in quantized}
    for v in model.weights:
        if v.path in before and v.path not in int8_paths:
            assert np.array_equal(v.numpy(), before[v.path]), v.path
