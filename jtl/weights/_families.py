"""Per-source weight tables and model builders: Hugging Face ViT/DeiT, BERT and ResNet, big_vision/vit_jax
ViT ``.npz``, torchvision ResNet and VGG state dicts."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from jtl.weights._convert import Rule, batch_norm, conv, layer_norm, linear, same
from jtl.weights._readers import WeightLoadError

State = dict[str, np.ndarray]


class Family(NamedTuple):
    """How to turn one source layout into a jtl model: its table (or a function of the checkpoint that
    builds it, where names depend on the architecture), and its model's fields from the source."""

    name: str
    model: str  # the jtl model class name in jtl.models
    rules: list[Rule] | Callable[[State], list[Rule]]
    fields: Callable[[dict[str, Any], State], dict[str, Any]]
    resizers: dict[str, Callable[[np.ndarray, tuple], np.ndarray]]

    def rules_for(self, state: State) -> list[Rule]:
        return self.rules(state) if callable(self.rules) else self.rules


def resample_pos_embedding(num_prefix_tokens: int) -> Callable[[np.ndarray, tuple], np.ndarray]:
    """Resamples ViT position embeddings to a new patch grid, keeping the class token's embedding, as
    vit_jax and big_vision do when fine-tuning at a new resolution (bilinear on the grid).

    Args:
      num_prefix_tokens: tokens before the patch grid (1 for a class token).

    Returns:
      ``resize(pos (1, prefix + n*n, D), target_shape) -> (1, prefix + m*m, D)``.

    >>> resize = resample_pos_embedding(1)
    >>> resize(np.ones((1, 1 + 4 * 4, 8), np.float32), (1, 1 + 6 * 6, 8)).shape
    (1, 37, 8)
    """

    def resize(pos: np.ndarray, target_shape: tuple) -> np.ndarray:
        prefix, grid = pos[:, :num_prefix_tokens], pos[0, num_prefix_tokens:]
        old, new = math.isqrt(grid.shape[0]), math.isqrt(target_shape[1] - num_prefix_tokens)
        if old * old != grid.shape[0] or new * new != target_shape[1] - num_prefix_tokens:
            raise WeightLoadError(f"position embeddings {pos.shape} -> {target_shape}: not square patch grids")
        grid = grid.reshape(old, old, -1).astype(np.float32)
        resized = jax.image.resize(grid, (new, new, grid.shape[-1]), method="bilinear")
        return np.concatenate([prefix, np.asarray(resized).reshape(1, new * new, -1)], axis=1)

    return resize


def _vit_resizers(fields: dict[str, Any]) -> dict:
    return {r"params/embed/pos_embedding": resample_pos_embedding(1 if fields.get("pooling") == "cls" else 0)}


# --- Hugging Face ViT / DeiT (no distillation token) ------------------------------------------------------
_HF_VIT = r"(?:vit\.|deit\.)?"
_HF_VIT_BLOCK = _HF_VIT + r"encoder\.layer\.(\d+)\."
HF_VIT_RULES = [
    Rule(_HF_VIT + r"embeddings\.cls_token", "params/embed/cls"),
    Rule(_HF_VIT + r"embeddings\.position_embeddings", "params/embed/pos_embedding"),
    *conv(_HF_VIT + r"embeddings\.patch_embeddings\.projection", "embed/patch"),
    *linear(_HF_VIT_BLOCK + r"attention\.attention\.(query|key|value)", r"encoder/block_\1/attn/\2"),
    *linear(_HF_VIT_BLOCK + r"attention\.output\.dense", r"encoder/block_\1/attn/out"),
    *linear(_HF_VIT_BLOCK + r"intermediate\.dense", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_VIT_BLOCK + r"output\.dense", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_HF_VIT_BLOCK + r"layernorm_before", r"encoder/block_\1/norm1"),
    *layer_norm(_HF_VIT_BLOCK + r"layernorm_after", r"encoder/block_\1/norm2"),
    *layer_norm(_HF_VIT + r"layernorm", "norm"),
    *linear(_HF_VIT + r"pooler\.dense", "pre_logits"),
    *linear(r"classifier", "head"),
]
_TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh"}


def _hf_gelu(config: dict[str, Any]) -> bool:
    act = config.get("hidden_act", "gelu")
    if act not in _TANH_GELUS | {"gelu", "gelu_python"}:
        raise WeightLoadError(f"config.json: hidden_act={act!r} is not supported (GELU variants only)")
    return act in _TANH_GELUS


def _find(state: State, pattern: str) -> np.ndarray | None:
    regex = re.compile(pattern)
    return next((v for k, v in state.items() if regex.fullmatch(k)), None)


def hf_vit_fields(config: dict[str, Any], state: State) -> dict[str, Any]:
    if any("distillation" in k for k in state):
        raise WeightLoadError("distilled DeiT checkpoints (with a distillation token) are not supported")
    if not config.get("qkv_bias", True):
        raise WeightLoadError("config.json: qkv_bias=false is not supported")
    classifier = _find(state, r"classifier\.weight")
    pooler = _find(state, _HF_VIT + r"pooler\.dense\.weight")
    return {
        "patch_size": config.get("patch_size", 16),
        "hidden_size": config.get("hidden_size", 768),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "mlp_dim": config.get("intermediate_size", 3072),
        "image_size": config.get("image_size", 224),
        "num_channels": config.get("num_channels", 3),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "gelu_approximate": _hf_gelu(config),
        "dropout_rate": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
        "pooling": "cls",
        "pre_logits_size": None if pooler is None else pooler.shape[0],
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


HF_VIT = Family("hf-vit", "ViT", HF_VIT_RULES, hf_vit_fields, {})

# --- Hugging Face BERT --------------------------------------------------------------------------------------
_HF_BERT = r"(?:bert\.)?"
_HF_BERT_BLOCK = _HF_BERT + r"encoder\.layer\.(\d+)\."
HF_BERT_RULES = [
    Rule(_HF_BERT + r"embeddings\.word_embeddings\.weight", "params/embed/word/embedding"),
    Rule(_HF_BERT + r"embeddings\.position_embeddings\.weight", "params/embed/position/embedding"),
    Rule(_HF_BERT + r"embeddings\.token_type_embeddings\.weight", "params/embed/token_type/embedding"),
    Rule(_HF_BERT + r"embeddings\.position_ids", None),
    *layer_norm(_HF_BERT + r"embeddings\.LayerNorm", "embed/norm"),
    *linear(_HF_BERT_BLOCK + r"attention\.self\.(query|key|value)", r"encoder/block_\1/attn/\2"),
    *linear(_HF_BERT_BLOCK + r"attention\.output\.dense", r"encoder/block_\1/attn/out"),
    *layer_norm(_HF_BERT_BLOCK + r"attention\.output\.LayerNorm", r"encoder/block_\1/norm1"),
    *linear(_HF_BERT_BLOCK + r"intermediate\.dense", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_BERT_BLOCK + r"output\.dense", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_HF_BERT_BLOCK + r"output\.LayerNorm", r"encoder/block_\1/norm2"),
    *linear(_HF_BERT + r"pooler\.dense", "pooler"),
    *linear(r"classifier", "head"),
]


def hf_bert_fields(config: dict[str, Any], state: State) -> dict[str, Any]:
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise WeightLoadError(
            f"config.json: position_embedding_type={config['position_embedding_type']!r} is not supported"
        )
    classifier = _find(state, r"classifier\.weight")
    return {
        "vocab_size": config.get("vocab_size", 30522),
        "hidden_size": config.get("hidden_size", 768),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "intermediate_size": config.get("intermediate_size", 3072),
        "max_position_embeddings": config.get("max_position_embeddings", 512),
        "type_vocab_size": config.get("type_vocab_size", 2),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "gelu_approximate": _hf_gelu(config),
        "dropout_rate": config.get("hidden_dropout_prob", 0.1),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.1),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


HF_BERT = Family("hf-bert", "Bert", HF_BERT_RULES, hf_bert_fields, {})

# --- big_vision / vit_jax ViT .npz ------------------------------------------------------------------------
# Published vit_jax checkpoints name the block's layers LayerNorm_0, MultiHeadDotProductAttention_1,
# LayerNorm_2, MlpBlock_3; newer ones (and big_vision) LayerNorm_0, MultiHeadDotProductAttention_0,
# LayerNorm_1, MlpBlock_0. Both are accepted.
_BV_BLOCK = r"Transformer/encoderblock_(\d+)/"
_BV_ATTN = _BV_BLOCK + r"MultiHeadDotProductAttention_[01]/"


def _heads_to_width(x: np.ndarray) -> np.ndarray:
    """(D, heads, head_dim) -> (D, D) and (heads, head_dim) -> (D,)."""
    return x.reshape(*x.shape[:-2], -1)


def _out_to_width(x: np.ndarray) -> np.ndarray:
    """(heads, head_dim, D) -> (D, D)."""
    return x.reshape(-1, x.shape[-1])


BIG_VISION_VIT_RULES = [
    Rule(r"embedding/(kernel|bias)", r"params/embed/patch/\1"),
    Rule(r"cls", "params/embed/cls"),
    Rule(r"(?:Transformer/posembed_input/)?pos_embedding", "params/embed/pos_embedding"),
    Rule(_BV_BLOCK + r"LayerNorm_0/(scale|bias)", r"params/encoder/block_\1/norm1/\2"),
    Rule(_BV_BLOCK + r"LayerNorm_[12]/(scale|bias)", r"params/encoder/block_\1/norm2/\2"),
    Rule(_BV_ATTN + r"(query|key|value)/(kernel|bias)", r"params/encoder/block_\1/attn/\2/\3", _heads_to_width),
    Rule(_BV_ATTN + r"out/kernel", r"params/encoder/block_\1/attn/out/kernel", _out_to_width),
    Rule(_BV_ATTN + r"out/bias", r"params/encoder/block_\1/attn/out/bias"),
    Rule(_BV_BLOCK + r"MlpBlock_[03]/Dense_0/(kernel|bias)", r"params/encoder/block_\1/mlp/fc1/\2"),
    Rule(_BV_BLOCK + r"MlpBlock_[03]/Dense_1/(kernel|bias)", r"params/encoder/block_\1/mlp/fc2/\2"),
    Rule(r"Transformer/encoder_norm/(scale|bias)", r"params/norm/\1"),
    Rule(r"pre_logits/(kernel|bias)", r"params/pre_logits/\1"),
    Rule(r"head/(kernel|bias)", r"params/head/\1"),
]


def unstack_scanned_blocks(state: State) -> State:
    """big_vision's ``scan=True`` stores all blocks stacked under ``Transformer/encoderblock/``; split them."""
    stacked = {k: v for k, v in state.items() if k.startswith("Transformer/encoderblock/")}
    if not stacked:
        return state
    out = {k: v for k, v in state.items() if k not in stacked}
    for key, value in stacked.items():
        rest = key.removeprefix("Transformer/encoderblock/")
        for i in range(value.shape[0]):
            out[f"Transformer/encoderblock_{i}/{rest}"] = value[i]
    return out


def big_vision_vit_fields(config: dict[str, Any], state: State) -> dict[str, Any]:
    del config
    if any(k.startswith("MAPHead") for k in state):
        raise WeightLoadError("big_vision ViTs with MAP pooling (MAPHead_*) are not supported")
    kernel = state.get("embedding/kernel")
    query = _find(state, _BV_ATTN + r"query/kernel")
    fc1 = _find(state, _BV_BLOCK + r"MlpBlock_[03]/Dense_0/kernel")
    pos = _find(state, r"(?:Transformer/posembed_input/)?pos_embedding")
    if kernel is None or query is None or fc1 is None or pos is None:
        raise WeightLoadError(
            "not a big_vision/vit_jax ViT: expected 'embedding/kernel', 'pos_embedding' and "
            "'Transformer/encoderblock_*' keys"
        )
    depth = len({m.group(1) for k in state if (m := re.match(_BV_BLOCK, k))})
    pooling = "cls" if "cls" in state else "gap"
    grid = pos.shape[1] - (1 if pooling == "cls" else 0)
    head = state.get("head/kernel")
    return {
        "patch_size": kernel.shape[0],
        "num_channels": kernel.shape[2],
        "hidden_size": kernel.shape[3],
        "num_layers": depth,
        "num_heads": query.shape[1],
        "mlp_dim": fc1.shape[1],
        "image_size": math.isqrt(grid) * kernel.shape[0],
        "pooling": pooling,
        "pre_logits_size": state["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in state else None,
        "num_classes": 0 if head is None else head.shape[1],
        "gelu_approximate": True,
        "layer_norm_eps": 1e-6,
    }


BIG_VISION_VIT = Family("big_vision-vit", "ViT", BIG_VISION_VIT_RULES, big_vision_vit_fields, {})


# --- Hugging Face ResNet ------------------------------------------------------------------------------------
_HF_RESNET = r"(?:resnet\.)?"
_HF_RESNET_BLOCK = _HF_RESNET + r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
HF_RESNET_RULES = [
    *conv(_HF_RESNET + r"embedder\.embedder\.convolution", "embed/conv"),
    *batch_norm(_HF_RESNET + r"embedder\.embedder\.normalization", "embed/bn"),
    *conv(_HF_RESNET_BLOCK + r"shortcut\.convolution", r"stage_\1/block_\2/shortcut/conv"),
    *batch_norm(_HF_RESNET_BLOCK + r"shortcut\.normalization", r"stage_\1/block_\2/shortcut/bn"),
    *(
        rule
        for k in range(3)
        for rule in (
            *conv(_HF_RESNET_BLOCK + rf"layer\.{k}\.convolution", rf"stage_\1/block_\2/conv{k + 1}"),
            *batch_norm(_HF_RESNET_BLOCK + rf"layer\.{k}\.normalization", rf"stage_\1/block_\2/bn{k + 1}"),
        )
    ),
    *linear(r"classifier\.1", "head"),
]


def hf_resnet_fields(config: dict[str, Any], state: State) -> dict[str, Any]:
    if config.get("hidden_act", "relu") != "relu":
        raise WeightLoadError(f"config.json: hidden_act={config['hidden_act']!r} is not supported (relu only)")
    classifier = _find(state, r"classifier\.1\.weight")
    return {
        "embedding_size": config.get("embedding_size", 64),
        "hidden_sizes": tuple(config.get("hidden_sizes", (256, 512, 1024, 2048))),
        "depths": tuple(config.get("depths", (3, 4, 6, 3))),
        "layer_type": config.get("layer_type", "bottleneck"),
        "downsample_in_first_stage": config.get("downsample_in_first_stage", False),
        "downsample_in_bottleneck": config.get("downsample_in_bottleneck", False),
        "num_channels": config.get("num_channels", 3),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


HF_RESNET = Family("hf-resnet", "ResNet", HF_RESNET_RULES, hf_resnet_fields, {})

# --- torchvision ResNet (models.resnet18 / resnet50 state dicts) --------------------------------------------
# torchvision counts stages layer1..layer4 from 1; jtl counts stage_0.. from 0. Regexes cannot subtract, so
# the table lists the stages.
TORCHVISION_RESNET_RULES = [
    *conv(r"conv1", "embed/conv"),
    *batch_norm(r"bn1", "embed/bn"),
    *(
        rule
        for s in range(8)
        for rule in (
            *conv(rf"layer{s + 1}\.(\d+)\.conv([123])", rf"stage_{s}/block_\1/conv\2"),
            *batch_norm(rf"layer{s + 1}\.(\d+)\.bn([123])", rf"stage_{s}/block_\1/bn\2"),
            *conv(rf"layer{s + 1}\.(\d+)\.downsample\.0", rf"stage_{s}/block_\1/shortcut/conv"),
            *batch_norm(rf"layer{s + 1}\.(\d+)\.downsample\.1", rf"stage_{s}/block_\1/shortcut/bn"),
        )
    ),
    *linear(r"fc", "head"),
]


def torchvision_resnet_fields(config: dict[str, Any], state: State) -> dict[str, Any]:
    del config
    bottleneck = "layer1.0.conv3.weight" in state
    last = "conv3" if bottleneck else "conv2"
    depths, hidden = [], []
    stage = 1
    while f"layer{stage}.0.conv1.weight" in state:
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        depths.append(len(blocks))
        hidden.append(state[f"layer{stage}.0.{last}.weight"].shape[0])
        stage += 1
    if not depths or "conv1.weight" not in state:
        raise WeightLoadError("not a torchvision ResNet state dict: expected 'conv1.weight' and 'layer1.0.*' keys")
    return {
        "embedding_size": state["conv1.weight"].shape[0],
        "num_channels": state["conv1.weight"].shape[1],
        "hidden_sizes": tuple(hidden),
        "depths": tuple(depths),
        "layer_type": "bottleneck" if bottleneck else "basic",
        "num_classes": state["fc.weight"].shape[0] if "fc.weight" in state else 0,
    }


TORCHVISION_RESNET = Family("torchvision-resnet", "ResNet", TORCHVISION_RESNET_RULES, torchvision_resnet_fields, {})

# --- torchvision VGG (features.N / classifier.N) ------------------------------------------------------------


def _vgg_conv_indices(state: State) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"features\.(\d+)\.weight", k))})


def torchvision_vgg_rules(state: State) -> list[Rule]:
    indices = _vgg_conv_indices(state)
    channels = state[f"features.{indices[-1]}.weight"].shape[0] if indices else 1

    def fc1_from_nchw(x: np.ndarray) -> np.ndarray:
        # torchvision flattens (C, 7, 7); jtl flattens NHWC (7, 7, C): reorder the input dimension.
        pool = math.isqrt(x.shape[1] // channels)
        return x.reshape(x.shape[0], channels, pool, pool).transpose(2, 3, 1, 0).reshape(-1, x.shape[0])

    rules = [rule for i, index in enumerate(indices) for rule in conv(rf"features\.{index}", f"encoder/block_{i}")]
    return [
        *rules,
        Rule(r"classifier\.0\.weight", "params/fc1/kernel", fc1_from_nchw),
        Rule(r"classifier\.0\.bias", "params/fc1/bias"),
        *linear(r"classifier\.3", "fc2"),
        *linear(r"classifier\.6", "head"),
    ]


def torchvision_vgg_fields(config: dict[str, Any], state: State) -> dict[str, Any]:
    del config
    indices = _vgg_conv_indices(state)
    if not indices or "classifier.0.weight" not in state:
        raise WeightLoadError("not a torchvision VGG state dict: expected 'features.N.*' and 'classifier.N.*' keys")
    if "features.1.weight" in state and state["features.1.weight"].ndim == 1:
        raise WeightLoadError("VGG with batch norm (vgg16_bn) is not supported")
    layers: list = []
    previous = None
    for index in indices:
        if previous is not None and index - previous == 3:  # conv, relu, then a max-pool between them
            layers.append("M")
        layers.append(int(state[f"features.{index}.weight"].shape[0]))
        previous = index
    layers.append("M")
    channels = layers[-2]
    fc1 = state["classifier.0.weight"]
    return {
        "layers": tuple(layers),
        "classifier_width": fc1.shape[0],
        "pool_size": math.isqrt(fc1.shape[1] // channels),
        "num_channels": state[f"features.{indices[0]}.weight"].shape[1],
        "num_classes": state["classifier.6.weight"].shape[0] if "classifier.6.weight" in state else 0,
    }


TORCHVISION_VGG = Family("torchvision-vgg", "VGG", torchvision_vgg_rules, torchvision_vgg_fields, {})


def resizers_for(family: Family, fields: dict[str, Any]) -> dict:
    """Shape changes a family allows: ViT position embeddings follow the image size."""
    if family.model == "ViT":
        return _vit_resizers(fields)
    return dict(family.resizers)


__all__ = [
    "BIG_VISION_VIT",
    "HF_BERT",
    "HF_RESNET",
    "HF_VIT",
    "TORCHVISION_RESNET",
    "TORCHVISION_VGG",
    "Family",
    "same",
]
