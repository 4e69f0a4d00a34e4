"""Vision Transformer: the Hugging Face ViT/DeiT architecture and the big_vision/vit_jax variant.

Parameter names (``embed/...``, ``encoder/block_{i}/...``, ``norm``, ``pre_logits``, ``head``) are the same
for both; the variants differ in settings taken from the checkpoint: GELU form (exact for Hugging Face,
tanh for vit_jax), LayerNorm epsilon (1e-12 vs 1e-6), pooling (class token or global average), and an
optional pre-logits layer (Hugging Face's in21k "pooler", vit_jax's ``representation_size``), and biases on the
query/key/value projections (``qkv_bias``). Images and patches may be rectangular (``(height, width)`` sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.masking import block_layer_index
from jtl.models._layers import (
    ImageInputs,
    PatchEmbed,
    classifier_head,
    patch_grid,
    token_feature_maps,
    transformer_encoder,
)

# name: (hidden size, depth, heads, MLP size), as in the ViT and DeiT papers.
SIZES = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
}
PATCHES = (8, 14, 16, 32)
# "cls": the class token; "gap": the mean of the tokens; "cls+dist": a distilled DeiT's class and distillation
# tokens, averaged as features, each with its own classifier (``head/cls``, ``head/dist``) whose logits are averaged.
POOLINGS = ("cls", "gap", "cls+dist")


class ViT(ImageInputs, nn.Module):
    """A ViT classifier over NHWC images; ``num_classes=0`` returns the pooled (pre-head) features.

    Hidden states are sown as ``intermediates/encoder/hidden_states`` (the embeddings, then each block's
    output) for ``apply(..., mutable=["intermediates"])``.

    >>> import jax, jax.numpy as jnp
    >>> model = ViT(patch_size=4, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16, image_size=8,
    ...             num_classes=3)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    >>> model.apply(variables, jnp.ones((2, 8, 8, 3))).shape
    (2, 3)
    """

    patch_size: int | tuple[int, int] = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    image_size: int | tuple[int, int] = 224
    num_channels: int = 3
    num_classes: int = 1000
    pooling: str = "cls"
    pre_logits_size: int | None = None
    gelu_approximate: bool = False
    layer_norm_eps: float = 1e-12
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    qkv_bias: bool = True
    distillation_token: bool = False
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # each block's rematerialisation in training: "none", "full" or "dots_saveable"
    scan_layers: bool = False  # the blocks as one jax.lax.scan over their stacked params (same names)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if self.pooling not in POOLINGS:
            raise ValueError(f"ViT pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "cls+dist" and (not self.distillation_token or self.pre_logits_size is not None):
            raise ValueError("ViT pooling 'cls+dist' needs distillation_token=True and no pre-logits layer")
        x = PatchEmbed(
            self.patch_size,
            self.hidden_size,
            self.pooling != "gap",
            self.dropout_rate,
            self.dtype,
            distillation_token=self.distillation_token,
            name="embed",
        )(images.astype(self.dtype), train=train)
        x = transformer_encoder(self, mlp_dim=self.mlp_dim, pre_norm=True, qkv_bias=self.qkv_bias)(x, train=train)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
        tokens = x[:, :2]
        x = {"cls": x[:, 0], "gap": x.mean(axis=1), "cls+dist": tokens.mean(axis=1)}[self.pooling]
        if self.pre_logits_size is not None:
            x = jnp.tanh(nn.Dense(self.pre_logits_size, dtype=self.dtype, name="pre_logits")(x))
        self.sow("intermediates", "features", x)  # the pooled features, which features_and_logits reads
        if not self.num_classes:
            return x
        if self.pooling == "cls+dist":
            return DistilledHead(self.num_classes, self.head_zero_init, self.dtype, name="head")(tokens)
        return classifier_head(self.num_classes, self.head_zero_init, self.dtype)(x)


class DistilledHead(nn.Module):
    """DeiT's two classifiers, ``cls`` on the class token and ``dist`` on the distillation token, averaged (how
    a distilled DeiT predicts, and fine-tunes without its teacher)."""

    num_classes: int
    zero_init: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        kernel_init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        dense = lambda name: nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.dtype, name=name)
        return (dense("cls")(tokens[:, 0]) + dense("dist")(tokens[:, 1])) / 2


def vit_config(name: str) -> dict:
    """Architecture fields for ``vit-{ti,s,b,l}{8,14,16,32}``, e.g. ``vit-b16``.

    Args:
      name: the size (``ti``, ``s``, ``b``, ``l``) and patch size, e.g. ``vit-b16``.

    Returns:
      The architecture fields, as ``ViT``'s keyword arguments.

    >>> vit_config("vit-s16")["hidden_size"]
    384
    """
    size, patch = _parse(name)
    hidden, depth, heads, mlp = SIZES[size]
    return {
        "patch_size": patch,
        "hidden_size": hidden,
        "num_layers": depth,
        "num_heads": heads,
        "mlp_dim": mlp,
    }


def _parse(name: str) -> tuple[str, int]:
    body = name.removeprefix("vit-")
    for size in sorted(SIZES, key=len, reverse=True):
        if body.startswith(size) and body[len(size) :].isdigit() and int(body[len(size) :]) in PATCHES:
            return size, int(body[len(size) :])
    raise ValueError(f"unknown ViT name {name!r}: expected vit-{{{','.join(SIZES)}}}{{{','.join(map(str, PATCHES))}}}")


def layer_index(model: ViT) -> tuple[Callable[[str], int], int]:
    """Embeddings are layer 0, ``encoder/block_{i}`` layer ``i + 1``, the final norm and head the top."""
    return block_layer_index(model.num_layers), model.num_layers + 1


def prefix_tokens(pooling: str, distillation_token: bool) -> int:
    """The tokens before the patch grid: the class token (unless ``gap`` pooling) and DeiT's distillation token.

    Args:
      pooling: the ViT's ``pooling``.
      distillation_token: its ``distillation_token``.

    Returns:
      Their number.

    >>> prefix_tokens("cls", False), prefix_tokens("gap", False), prefix_tokens("cls+dist", True)
    (1, 0, 2)
    """
    return (0 if pooling == "gap" else 1) + distillation_token


def feature_maps(model: ViT, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """Chosen blocks' patch tokens on the patch grid (see :func:`jtl.models.feature_maps`)."""
    grid = patch_grid(model.image_size, model.patch_size)
    prefix = prefix_tokens(model.pooling, model.distillation_token)
    return token_feature_maps(intermediates["encoder"]["hidden_states"], grid, prefix, layers)


def _configs() -> dict[str, dict[str, Any]]:
    configs = {f"vit-{size}{patch}": vit_config(f"vit-{size}{patch}") for size in SIZES for patch in PATCHES}
    # The tiny configuration for end-to-end tests (vit_jax's `testing` model config).
    configs["vit-testing"] = {
        "patch_size": 4,
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_dim": 32,
        "image_size": 16,
    }
    # The offline testbeds' model (configs/quickstart.py, domain_adaptation.py, multitask.py): a small ViT over
    # scikit-learn's 8x8 one-channel digits, 2x2 patches, 18k parameters.
    configs["vit-digits"] = {
        "image_size": 8,
        "patch_size": 2,
        "num_channels": 1,
        "hidden_size": 32,
        "num_heads": 2,
        "mlp_dim": 64,
        "num_layers": 2,
        "dropout_rate": 0.1,
        "head_zero_init": False,
    }
    return configs


CONFIGS = _configs()
