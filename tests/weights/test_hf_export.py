"""save_hf_pretrained: every family loaded from Hugging Face goes back to a checkpoint that transformers loads, with
a new head and fine-tuned weights, and gives jtl's logits."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl import models  # noqa: E402
from jtl.weights import (  # noqa: E402
    WeightLoadError,
    checkpoint_keys,
    load_pretrained,
    safetensors_shapes,
    save_hf_pretrained,
)
from tests.parity import TOL, jit_apply, max_abs, nhwc, randomise, randomise_running_statistics  # noqa: E402

T = transformers
VIT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)
TEXT = dict(vocab_size=100, **VIT, max_position_embeddings=16)
TOWER = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2)
WAV2VEC2 = dict(
    **VIT, conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4,
    num_conv_pos_embedding_groups=2, classifier_proj_size=6,
)  # fmt: skip
SWIN = dict(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=2, mlp_ratio=2.0)

# id -> (reference classifier, its config, the inputs it takes). Configs are the parity tests' shapes, smaller.
FAMILIES = {
    "vit": (T.ViTForImageClassification, T.ViTConfig(**VIT, image_size=16, patch_size=4), "image"),
    "deit": (T.DeiTForImageClassification, T.DeiTConfig(**VIT, image_size=16, patch_size=4), "image"),
    "bert": (T.BertForSequenceClassification, T.BertConfig(**TEXT), "text"),
    "roberta": (T.RobertaForSequenceClassification, T.RobertaConfig(**TEXT, pad_token_id=1, type_vocab_size=1), "text"),
    "distilbert": (
        T.DistilBertForSequenceClassification,
        T.DistilBertConfig(vocab_size=100, dim=16, n_layers=2, n_heads=2, hidden_dim=24, max_position_embeddings=16),
        "text",
    ),
    "electra": (T.ElectraForSequenceClassification, T.ElectraConfig(**TEXT, embedding_size=8), "text"),
    "albert": (
        T.AlbertForSequenceClassification,
        T.AlbertConfig(**{**TEXT, "num_hidden_layers": 3}, embedding_size=8, num_hidden_groups=2, hidden_act="gelu"),
        "text",
    ),
    "deberta-v2": (
        T.DebertaV2ForSequenceClassification,
        T.DebertaV2Config(
            **TEXT,
            relative_attention=True,
            position_buckets=6,
            max_relative_positions=10,
            pos_att_type="p2c|c2p",
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            type_vocab_size=0,
        ),
        "text",
    ),
    "modernbert": (
        T.ModernBertForSequenceClassification,
        T.ModernBertConfig(
            **TEXT,
            global_attn_every_n_layers=2,
            local_attention=4,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
            attn_implementation="eager",
        ),
        "text",
    ),
    "dinov2": (T.Dinov2ForImageClassification, T.Dinov2Config(**VIT, image_size=16, patch_size=4), "image"),
    "dinov2-registers": (
        T.Dinov2WithRegistersForImageClassification,
        T.Dinov2WithRegistersConfig(**VIT, image_size=16, patch_size=4, num_register_tokens=2),
        "image",
    ),
    "clip": (
        T.CLIPForImageClassification,
        T.CLIPConfig(vision_config={**TOWER, "image_size": 16, "patch_size": 4}, text_config=TOWER),
        "image",
    ),
    "siglip": (
        T.SiglipForImageClassification,
        T.SiglipConfig(vision_config={**TOWER, "image_size": 16, "patch_size": 4}, text_config=TOWER),
        "image",
    ),
    "siglip2": (
        T.Siglip2ForImageClassification,
        T.Siglip2Config(vision_config={**TOWER, "num_patches": 16, "patch_size": 4}, text_config=TOWER),
        "naflex",
    ),
    "convnext": (
        T.ConvNextForImageClassification,
        T.ConvNextConfig(patch_size=2, depths=[1, 1], hidden_sizes=[8, 16], num_stages=2, layer_scale_init_value=0.5),
        "image",
    ),
    "convnextv2": (
        T.ConvNextV2ForImageClassification,
        T.ConvNextV2Config(patch_size=2, depths=[1, 1], hidden_sizes=[8, 16], num_stages=2),
        "image",
    ),
    "swin": (T.SwinForImageClassification, T.SwinConfig(**SWIN, use_absolute_embeddings=True), "image"),
    "swinv2": (T.Swinv2ForImageClassification, T.Swinv2Config(**SWIN, pretrained_window_sizes=[2, 0]), "image"),
    "beit": (
        T.BeitForImageClassification,
        T.BeitConfig(
            **VIT,
            image_size=16,
            patch_size=4,
            use_relative_position_bias=True,
            use_absolute_position_embeddings=True,
            layer_scale_init_value=0.3,
        ),
        "image",
    ),
    "resnet": (
        T.ResNetForImageClassification,
        T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck"),
        "image",
    ),
    "efficientnet": (
        T.EfficientNetForImageClassification,
        T.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.5, hidden_dim=320, image_size=33),
        "image",
    ),
    "mobilenet-v2": (
        T.MobileNetV2ForImageClassification,
        T.MobileNetV2Config(depth_multiplier=0.1, expand_ratio=2.0, image_size=32),
        "image",
    ),
    "ast": (
        T.ASTForAudioClassification,
        T.ASTConfig(**VIT, patch_size=4, frequency_stride=3, time_stride=2, max_length=13, num_mel_bins=10),
        "spectrogram",
    ),
    "wav2vec2": (T.Wav2Vec2ForSequenceClassification, T.Wav2Vec2Config(**WAV2VEC2), "audio"),
    "hubert": (
        T.HubertForSequenceClassification,
        T.HubertConfig(**WAV2VEC2, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
        "audio",
    ),
}


# Layouts tested elsewhere in this file, or with no transformers classifier to load an export into.
NOT_CLASSIFIERS = {
    "hf-clip-text": "a text tower, no classifier: test_text_tower_loads_in_transformers",
    "hf-siglip-text": "a text tower, no classifier: test_text_tower_loads_in_transformers",
    "detr-resnet": "DETR's backbone, inside a detector",
}


def test_every_hugging_face_layout_is_covered():
    """A layout with no row here (nor a reason) would go untested."""
    rows = {config.model_type for _, config, _ in FAMILIES.values()}
    untested = {layout.name for layout in _hf_layouts() if not rows & set(layout.model_types)}
    assert untested == set(NOT_CLASSIFIERS)


def _hf_layouts():
    return [layout for family in models.families() for layout in family.layouts if layout.model_types]


def _inputs(kind: str, config):
    """(the reference's keyword inputs as torch tensors, jtl's positional inputs)."""
    rng = np.random.default_rng(0)
    if kind == "image":
        config = getattr(config, "vision_config", config)
        channels, size = getattr(config, "num_channels", 3), getattr(config, "image_size", 32)
        pixels = torch.tensor(rng.normal(size=(2, channels, size, size)), dtype=torch.float32)
        return {"pixel_values": pixels}, (nhwc(pixels),)
    if kind == "text":
        ids = rng.integers(3, 100, size=(2, 8))
        mask = np.ones((2, 8), np.int64)
        mask[1, 5:] = 0
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}, (ids, mask)
    if kind == "audio":
        waveform = rng.normal(size=(2, 200)).astype(np.float32)
        mask = np.ones((2, 200), np.int64)
        return {"input_values": torch.tensor(waveform), "attention_mask": torch.tensor(mask)}, (waveform, mask)
    if kind == "spectrogram":
        features = rng.normal(size=(2, 13, 10)).astype(np.float32)
        return {"input_values": torch.tensor(features)}, (features,)
    patches = rng.normal(size=(2, 16, 48)).astype(np.float32)  # naflex: 3x5 patches of 16 places
    mask = np.zeros((2, 16), np.int64)
    mask[:, :15] = 1
    shapes = np.array([[3, 5]] * 2)
    return (
        {
            "pixel_values": torch.tensor(patches),
            "pixel_attention_mask": torch.tensor(mask),
            "spatial_shapes": torch.tensor(shapes),
        },
        (patches, mask, shapes),
    )


def _fine_tune(variables, seed: int):
    """Moves every variable a little (a stand-in for training): params by noise, running variances by a factor."""
    rng = np.random.default_rng(seed)

    def move(path, x):
        noise = rng.normal(size=np.shape(x)).astype(np.asarray(x).dtype)
        stats = jax.tree_util.keystr(path).startswith("['batch_stats']")
        return np.asarray(x) * (1 + 0.05 * noise) if stats else np.asarray(x) + 0.02 * noise

    return jax.tree_util.tree_map_with_path(move, variables)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Each family's tiny random classifier (5 classes), saved once: ``id -> directory``."""
    root = tmp_path_factory.mktemp("sources")

    def save(family):
        cls, config, _ = FAMILIES[family]
        fields = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
        config = type(config)(**fields, num_labels=5)
        torch.manual_seed(0)
        reference = randomise(cls(config), 0, scale=0.1)
        randomise_running_statistics(reference, 1)
        reference.save_pretrained(root / family)
        return root / family

    return save


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_new_head_fine_tuned_loads_in_transformers(family, sources, tmp_path):
    cls, config, kind = FAMILIES[family]
    source = sources(family)
    model, variables, _ = load_pretrained(source, num_classes=3, verbose=False)
    variables = _fine_tune(variables, 1)
    save_hf_pretrained(tmp_path, model, variables, source)

    # The checkpoint's own key names, and only the head's shape changed.
    before, after = safetensors_shapes(source / "model.safetensors"), safetensors_shapes(tmp_path / "model.safetensors")
    assert set(after) == set(before)
    layout = next(layout for layout in _hf_layouts() if config.model_type in layout.model_types)
    heads = {key for name, key in checkpoint_keys(layout, before).items() if name.startswith("params/head/")}
    assert set() < {key for key in before if before[key].shape != after[key].shape} <= heads
    reference = cls.from_pretrained(tmp_path).eval()
    assert reference.config.num_labels == 3
    theirs_inputs, ours_inputs = _inputs(kind, config)
    with torch.no_grad():
        theirs = reference(**theirs_inputs).logits.numpy()
    assert max_abs(jit_apply(model, variables, *ours_inputs), theirs) < TOL


def test_sharded_export_loads_in_transformers(sources, tmp_path):
    source = sources("bert")
    model, variables, _ = load_pretrained(source, num_classes=3, verbose=False)
    (tmp_path / "model.safetensors").write_bytes(b"stale")  # a previous single-file export must not shadow the index
    save_hf_pretrained(tmp_path, model, variables, source, max_shard_size="8KB", labels=["a", "b", "c"])
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted([*shards, "config.json", "model.safetensors.index.json"])
    reference = T.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reference.config.id2label == {0: "a", 1: "b", 2: "c"}
    theirs_inputs, ours_inputs = _inputs("text", FAMILIES["bert"][1])
    with torch.no_grad():
        theirs = reference(**theirs_inputs).logits.numpy()
    assert max_abs(jit_apply(model, variables, *ours_inputs), theirs) < TOL


# Base models (no classifier) that jtl loads with a new head. ELECTRA, DistilBERT, DeBERTa-v2 and ModernBERT have
# their pooler only inside the classifier (classifier.dense, pre_classifier, pooler.dense, head.dense + head.norm):
# it is initialised with the new head, as transformers' classifier initialises it.
HEADLESS = {
    "vit": lambda config: T.ViTModel(config, add_pooling_layer=False),
    "bert": T.BertModel,
    "roberta": T.RobertaModel,  # its pooler.dense goes to RobertaForSequenceClassification's classifier.dense
    "albert": T.AlbertModel,
    "electra": T.ElectraModel,
    "distilbert": T.DistilBertModel,
    "deberta-v2": T.DebertaV2Model,
    "modernbert": T.ModernBertModel,
}


@pytest.mark.parametrize("family", sorted(HEADLESS))
def test_headless_source_gets_the_rules_classifier(family, tmp_path):
    cls, config, kind = FAMILIES[family]
    source = tmp_path / "source"
    torch.manual_seed(0)
    randomise(HEADLESS[family](config), 0, scale=0.1).save_pretrained(source)
    model, variables, _ = load_pretrained(source, num_classes=3, verbose=False)
    variables = _fine_tune(variables, 2)
    save_hf_pretrained(tmp_path / "out", model, variables, source)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [cls.__name__]
    auto = {"image": T.AutoModelForImageClassification, "text": T.AutoModelForSequenceClassification}[kind]
    reference, info = auto.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(reference) is cls and not any(info.values())  # nothing missing, unexpected or mismatched
    theirs_inputs, ours_inputs = _inputs(kind, config)
    with torch.no_grad():
        theirs = reference.eval()(**theirs_inputs).logits.numpy()
    assert max_abs(jit_apply(model, variables, *ours_inputs), theirs) < TOL


# family -> (the text tower alone, the dual model, their configs' classes).
TEXT_TOWERS = {
    "clip": (T.CLIPTextModelWithProjection, T.CLIPModel, T.CLIPTextConfig, T.CLIPConfig),
    "siglip": (T.SiglipTextModel, T.SiglipModel, T.SiglipTextConfig, T.SiglipConfig),
}


@pytest.mark.parametrize("dual", [False, True], ids=["tower", "dual-with-layout"])
@pytest.mark.parametrize("family", sorted(TEXT_TOWERS))
def test_text_tower_loads_in_transformers(family, dual, tmp_path):
    """A fine-tuned text tower goes back to its own checkpoint, or with ``layout=`` into the dual model's (whose
    vision tower is copied as it was); transformers' text embeddings are jtl's."""
    tower_cls, dual_cls, tower_config, dual_config = TEXT_TOWERS[family]
    text = {**TOWER, "vocab_size": 100}
    reference = (
        dual_cls(dual_config(vision_config={**TOWER, "image_size": 16, "patch_size": 4}, text_config=text))
        if dual
        else tower_cls(tower_config(**text))
    )
    torch.manual_seed(0)
    randomise(reference, 0, scale=0.1).save_pretrained(tmp_path / "source")
    layout = f"hf-{family}-text" if dual else None
    model, variables, _ = load_pretrained(tmp_path / "source", layout=layout, verbose=False)
    variables = _fine_tune(variables, 3)
    save_hf_pretrained(tmp_path / "out", model, variables, tmp_path / "source", layout=layout)

    exported, info = type(reference).from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values())  # nothing missing, unexpected or mismatched
    before, after = (safetensors_shapes(tmp_path / d / "model.safetensors") for d in ("source", "out"))
    assert set(after) == set(before)
    if dual:
        vision = [key for key in before if key.startswith("vision_model.")]
        source, out = (load_file(tmp_path / d / "model.safetensors") for d in ("source", "out"))
        assert vision and all(np.array_equal(source[key], out[key]) for key in vision)
    theirs_inputs, ours_inputs = _inputs("text", None)
    with torch.no_grad():
        exported.eval()
        if dual:
            theirs = exported.get_text_features(**theirs_inputs).pooler_output  # the projected embeddings
        else:
            output = exported(**theirs_inputs)
            theirs = output.text_embeds if family == "clip" else output.pooler_output
    assert max_abs(jit_apply(model, variables, *ours_inputs), theirs.numpy()) < TOL


def test_wrong_source_or_changed_fields_say_so(sources, tmp_path):
    model, variables, _ = load_pretrained(sources("vit"), num_classes=3, verbose=False)
    with pytest.raises(WeightLoadError, match=r"holds a Bert checkpoint \(hf-bert\); the model is a ViT"):
        save_hf_pretrained(tmp_path, model, variables, sources("bert"))
    deeper = model.clone(num_layers=3)  # a field the config does not follow
    with pytest.raises(WeightLoadError, match=r"would not load back as this model: num_layers: the model has 3"):
        save_hf_pretrained(tmp_path, deeper, variables, sources("vit"))
    assert not list(tmp_path.iterdir())  # nothing half-written
