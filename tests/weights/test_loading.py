"""load_pretrained: formats, head surgery, resolution change, the report, and every error naming its key."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl.masking import named_leaves  # noqa: E402
from jtl.models import create, init  # noqa: E402
from jtl.weights import (  # noqa: E402
    WeightLoadError,
    adapt_input_channels,
    load_pretrained,
    read_torch,
    resample_pos_embedding,
    save_pretrained,
)


@pytest.fixture(scope="module")
def hf_vit_dir(tmp_path_factory):
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    path = tmp_path_factory.mktemp("hf_vit")
    model.save_pretrained(path)
    return path


def _images(size=32):
    return jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 3))


def _params(variables):
    return dict(named_leaves(variables["params"]))


def test_new_num_classes_replaces_the_head_with_zeros(hf_vit_dir):
    model, variables, report = load_pretrained(hf_vit_dir, num_classes=10, verbose=False)
    params = _params(variables)
    assert model.num_classes == 10 and params["head/kernel"].shape == (32, 10)
    assert not np.any(params["head/kernel"]) and not np.any(params["head/bias"])
    assert {name for name, _, _ in report.reinitialised} == {"params/head/bias", "params/head/kernel"}
    assert all("replaced; checkpoint had" in why for _, _, why in report.reinitialised)
    assert not report.missing and not report.unexpected
    reference = load_pretrained(hf_vit_dir, verbose=False).variables
    np.testing.assert_array_equal(
        params["encoder/block_1/mlp/fc2/kernel"], _params(reference)["encoder/block_1/mlp/fc2/kernel"]
    )


def test_resolution_change_resamples_position_embeddings(hf_vit_dir):
    base = load_pretrained(hf_vit_dir, verbose=False)
    model, variables, report = load_pretrained(hf_vit_dir, image_size=64, verbose=False)
    old, new = _params(base.variables)["embed/pos_embedding"], _params(variables)["embed/pos_embedding"]
    assert old.shape == (1, 17, 32) and new.shape == (1, 65, 32)
    np.testing.assert_array_equal(new[:, 0], old[:, 0])  # the class token's embedding is kept
    # As Hugging Face's ViT interpolates at run time: PyTorch's bicubic, align_corners=False.
    grid = torch.tensor(np.asarray(old[0, 1:]).reshape(1, 4, 4, 32)).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(new[0, 1:], expected.permute(0, 2, 3, 1).reshape(64, 32).numpy(), atol=1e-6)
    assert report.resized == [("params/embed/pos_embedding", (1, 17, 32), (1, 65, 32))]
    assert model.apply(variables, _images(64)).shape == (2, 5)


def test_resample_keeps_a_constant_grid_constant():
    pos = np.concatenate([np.full((1, 1, 3), 7.0), np.ones((1, 9, 3))], axis=1)
    out = resample_pos_embedding(1)(pos, (1, 26, 3))
    assert out.shape == (1, 26, 3) and np.allclose(out[0, 1:], 1.0) and np.all(out[0, 0] == 7.0)


def _timm_adapt_input_conv(in_chans, conv_weight):
    """timm's ``adapt_input_conv`` (timm/models/_manipulate.py), transcribed in numpy for (O, I, H, W) RGB kernels."""
    if in_chans == 1:
        return conv_weight.sum(axis=1, keepdims=True)
    repeat = int(np.ceil(in_chans / 3))
    return np.tile(conv_weight, (1, repeat, 1, 1))[:, :in_chans] * (3 / float(in_chans))


@pytest.mark.parametrize("channels", [1, 2, 4, 7])
def test_input_channels_are_adapted_by_timms_formula(channels):
    oihw = np.random.default_rng(channels).normal(size=(5, 3, 2, 2)).astype(np.float32)
    ours = adapt_input_channels(oihw.transpose(2, 3, 1, 0), (2, 2, channels, 5)).transpose(3, 2, 0, 1)
    np.testing.assert_allclose(ours, _timm_adapt_input_conv(channels, oihw), rtol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "vit-testing",
        "dinov2-testing",
        "resnet-testing",
        "vgg-testing",
        "convnext-testing",
        "efficientnet-testing",
        "mobilenet_v2-testing",
    ],
)
def test_an_rgb_checkpoint_loads_for_one_or_four_channels(name, tmp_path):
    model = create(name, num_classes=3)
    variables = init(model, seed=1)
    head = variables["params"]["head"]  # random, not ViT's zeros or a constant that LayerNorm's output sums away
    keys = iter(jax.random.split(jax.random.PRNGKey(2), len(head)))
    variables["params"]["head"] = {k: jax.random.normal(next(keys), v.shape) for k, v in head.items()}
    save_pretrained(tmp_path, model, variables)
    (rgb,) = model.example_inputs(2)
    images = jax.random.normal(jax.random.PRNGKey(0), (*rgb.shape[:-1], 4))
    # The adapted first layer is linear in the channels: one channel is the RGB model on the grey image
    # repeated; four channels (RGB, R repeated, each scaled 3/4) are the RGB model on 3/4 (R + 4th, G, B).
    grey = images[..., :1]
    rgb_of_four = 0.75 * jnp.stack([images[..., 0] + images[..., 3], images[..., 1], images[..., 2]], axis=-1)
    for channels, inputs, rgb_inputs in ((1, grey, jnp.repeat(grey, 3, axis=-1)), (4, images, rgb_of_four)):
        adapted, adapted_variables, report = load_pretrained(tmp_path, num_channels=channels, verbose=False)
        assert len(report.resized) == 1 and report.resized[0][2][2] == channels, report.resized
        expected = model.apply(variables, rgb_inputs)
        assert float(jnp.std(expected)) > 0.1  # outputs that differ between examples and classes
        np.testing.assert_allclose(adapted.apply(adapted_variables, inputs), expected, rtol=1e-4, atol=1e-5)


def test_drop_pre_logits(tmp_path):
    config = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8
    )
    transformers.ViTModel(config, add_pooling_layer=True).save_pretrained(tmp_path)
    model, variables, report = load_pretrained(tmp_path, num_classes=3, drop_pre_logits=True, verbose=False)
    assert model.pre_logits_size is None and "pre_logits" not in variables["params"]
    assert [name for name, _ in report.unexpected] == [
        "params/pre_logits/bias (from 'pooler.dense.bias')",
        "params/pre_logits/kernel (from 'pooler.dense.weight')",
    ]


TINY_TEXT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
POOLER = ["params/pooler/bias", "params/pooler/kernel"]


def test_base_model_gets_a_fresh_pooler_only_with_a_new_head(tmp_path):
    """ElectraModel has no pooler (ElectraForSequenceClassification's classifier.dense): a new head brings a fresh
    one, reported as re-initialised; without a new head the checkpoint still lacks it."""
    transformers.ElectraModel(transformers.ElectraConfig(**TINY_TEXT, embedding_size=8)).save_pretrained(tmp_path)
    _, variables, report = load_pretrained(tmp_path, num_classes=3, verbose=False)
    assert not report.missing
    assert sorted(report.reinitialised) == [
        ("params/head/bias", (3,), "not in checkpoint"),
        ("params/head/kernel", (16, 3), "not in checkpoint"),
        ("params/pooler/bias", (16,), "not in checkpoint; part of the new classifier"),
        ("params/pooler/kernel", (16, 16), "not in checkpoint; part of the new classifier"),
    ]
    assert np.std(variables["params"]["pooler"]["kernel"]) > 0  # initialised, not left empty
    with pytest.raises(WeightLoadError, match=r"2 variable\(s\) missing from the checkpoint: params/pooler/bias"):
        load_pretrained(tmp_path, verbose=False)


def test_a_classifier_part_in_the_checkpoint_is_loaded(tmp_path):
    """A ModernBERT masked-LM file has the classifier's head.dense and head.norm (jtl's pooler): they load."""
    special = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    config = transformers.ModernBertConfig(**TINY_TEXT, **special)
    transformers.ModernBertForMaskedLM(config).save_pretrained(tmp_path)
    _, _, report = load_pretrained(tmp_path, num_classes=3, verbose=False)
    loaded = {name for name, _ in report.loaded}
    assert {"params/pooler/dense/kernel", "params/pooler/norm/scale"} <= loaded and not report.missing
    assert {name for name, _, _ in report.reinitialised} == {"params/head/bias", "params/head/kernel"}


def test_a_base_model_pooler_is_still_required(tmp_path):
    """BERT's pooler belongs to BertModel, not to its classifier: a file without it is an error, new head or not."""
    transformers.BertModel(transformers.BertConfig(**TINY_TEXT), add_pooling_layer=False).save_pretrained(tmp_path)
    with pytest.raises(WeightLoadError, match=r"missing from the checkpoint: params/pooler/bias"):
        load_pretrained(tmp_path, num_classes=3, verbose=False)


@pytest.mark.parametrize("layout", ["sharded", "bin", "msgpack"])
def test_other_hf_weight_files(layout, hf_vit_dir, tmp_path):
    state = load_file(str(hf_vit_dir / "model.safetensors"))
    (tmp_path / "config.json").write_text((hf_vit_dir / "config.json").read_text())
    if layout == "sharded":
        names = sorted(state)
        halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for shard, keys in halves.items():
            save_file({k: state[k] for k in keys}, str(tmp_path / shard))
        index = {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    elif layout == "bin":
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    else:  # the Hugging Face Flax layout: `/`-nested, kernels (in, out) / HWIO, LayerNorm scale
        tree = {}
        for key, value in state.items():
            *path, leaf = key.split(".")
            if leaf == "weight" and value.ndim == 4:
                leaf, value = "kernel", value.transpose(2, 3, 1, 0)
            elif leaf == "weight" and value.ndim == 2:
                leaf, value = "kernel", value.T
            elif leaf == "weight":
                leaf = "scale"
            node = tree
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value
        (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    expected = load_pretrained(hf_vit_dir, verbose=False)
    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected
    np.testing.assert_allclose(
        model.apply(variables, _images()), expected.model.apply(expected.variables, _images()), atol=1e-6
    )


def test_jtl_orbax_format_round_trip(tmp_path):
    model = create("vit-testing", num_classes=4, dtype=jnp.float32)
    variables = init(model, seed=3)
    save_pretrained(tmp_path / "ckpt", model, variables)
    loaded, restored, report = load_pretrained(tmp_path / "ckpt", verbose=False)
    assert loaded == model and len(report.loaded) == len(jax.tree_util.tree_leaves(variables))
    np.testing.assert_array_equal(loaded.apply(restored, _images(16)), model.apply(variables, _images(16)))
    with pytest.raises(WeightLoadError, match="not empty; save_pretrained never overwrites"):
        save_pretrained(tmp_path / "ckpt", model, variables)


def test_report_is_printed(hf_vit_dir, capsys):
    load_pretrained(hf_vit_dir, num_classes=3)
    out = capsys.readouterr().out
    assert "re-initialised" in out and "params/head/kernel" in out


# --- errors: each names the file, key and shapes at fault ---------------------------------------------------


def _copy_hf(hf_vit_dir, tmp_path, edit):
    state = load_file(str(hf_vit_dir / "model.safetensors"))
    edit(state)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((hf_vit_dir / "config.json").read_text())
    return tmp_path


def test_shape_mismatches_are_collected_and_named(hf_vit_dir, tmp_path):
    def edit(state):
        state["vit.encoder.layer.0.attention.attention.query.weight"] = np.zeros((16, 32), np.float32)
        state["vit.encoder.layer.1.intermediate.dense.bias"] = np.zeros(3, np.float32)

    path = _copy_hf(hf_vit_dir, tmp_path, edit)
    with pytest.raises(WeightLoadError) as err:
        load_pretrained(path, verbose=False)
    message = str(err.value)
    assert str(path / "model.safetensors") in message and "2 shape mismatch(es)" in message
    assert (
        "params/encoder/block_0/attn/query/kernel (from 'vit.encoder.layer.0.attention.attention.query.weight'): "
        "expected (32, 32), found (32, 16)" in message
    )
    assert "params/encoder/block_1/mlp/fc1/bias (from 'vit.encoder.layer.1.intermediate.dense.bias'): " in message


def test_missing_keys_are_an_error_naming_them(hf_vit_dir, tmp_path):
    path = _copy_hf(hf_vit_dir, tmp_path, lambda s: s.pop("vit.encoder.layer.1.layernorm_after.weight"))
    with pytest.raises(
        WeightLoadError,
        match=r"1 variable\(s\) missing from the checkpoint: params/encoder/block_1/norm2/scale \(32,\)",
    ):
        load_pretrained(path, verbose=False)
    _, _, report = load_pretrained(path, strict=False, verbose=False)
    assert report.missing == [("params/encoder/block_1/norm2/scale", (32,))]


def test_unexpected_keys_are_reported(hf_vit_dir, tmp_path):
    path = _copy_hf(hf_vit_dir, tmp_path, lambda s: s.update({"vit.extra.weight": np.ones(2, np.float32)}))
    _, _, report = load_pretrained(path, verbose=False)
    assert report.unexpected == [("vit.extra.weight", (2,))]


def test_unknown_model_type_and_missing_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(WeightLoadError, match=r"config.json: model_type='gpt2' is not supported"):
        load_pretrained(tmp_path, verbose=False)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(WeightLoadError, match=r"no weights file; looked for model.safetensors.index.json"):
        load_pretrained(tmp_path, verbose=False)


def test_corrupt_safetensors_names_the_file(hf_vit_dir, tmp_path):
    (tmp_path / "config.json").write_text((hf_vit_dir / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(WeightLoadError, match=r"model.safetensors: not a readable safetensors file"):
        load_pretrained(tmp_path, verbose=False)


def test_pickled_checkpoint_without_torch_says_how_to_proceed(tmp_path, monkeypatch):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.ones(1)}, path)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(
        WeightLoadError, match=r"resnet.pth: reading a pickled PyTorch checkpoint needs torch.*safetensors"
    ):
        read_torch(path)


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"weights": torch.ones(1), "hook": print}, path)
    with pytest.raises(WeightLoadError, match=r"evil.bin: torch.load\(weights_only=True\) refused"):
        read_torch(path)


def test_unrecognised_file_lists_its_first_keys(tmp_path):
    path = tmp_path / "mystery.safetensors"
    save_file({"foo.weight": np.ones(2, np.float32)}, str(path))
    with pytest.raises(WeightLoadError, match=r"mystery.safetensors: cannot tell which model.*'foo.weight'"):
        load_pretrained(path, verbose=False)


def test_hub_failure_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightLoadError, match=r"no-such-org/no-such-model: could not fetch from the Hugging Face hub"):
        load_pretrained("no-such-org/no-such-model", verbose=False)


def test_not_a_path_nor_a_hub_id():
    with pytest.raises(WeightLoadError, match=r"no such file or directory"):
        load_pretrained("./does/not/exist.npz", verbose=False)
