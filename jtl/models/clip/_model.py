"""CLIP (Radford et al., 2021) as Hugging Face's ``CLIPVisionModel`` / ``CLIPTextModel`` (with projection) and
``CLIPForImageClassification`` compute it: two towers, each a registered family with one input kind.

``Clip`` (family ``clip``, images) is the vision tower: patch embedding without bias, class token, position
embeddings, ``embed/norm`` (Hugging Face's ``pre_layrnorm``), pre-norm blocks with quick GELU, then the class token
through ``norm`` (``post_layernorm``) and, when the checkpoint has one, ``proj`` (``visual_projection``): the image
embedding that fine-tuning and zero-shot classification start from. ``pooling="mean"`` is
``CLIPForImageClassification``'s: the mean of the patch tokens, without the final norm or projection.

``ClipText`` (family ``clip-text``, token ids) is the text tower: causal self-attention, ``norm``
(``final_layer_norm``), the end-of-text token's state pooled, optionally ``proj`` (``text_projection``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.masking import block_layer_index
from jtl.models._dual import ClipTextEmbed, tower_head
from jtl.models._layers import (
    ImageInputs,
    TokenInputs,
    pair,
    patch_grid,
    token_feature_maps,
    transformer_encoder,
)

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh")
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_python", *_TANH_GELUS)


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's activation, ``x * sigmoid(1.702 x)``.

    Args:
      x: the pre-activations.

    Returns:
      The activations.

    >>> round(float(quick_gelu(jnp.float32(1.0))), 4)
    0.8458
    """
    return x * jax.nn.sigmoid(1.702 * x)


def _activation(hidden_act: str) -> Callable[[jax.Array], jax.Array] | None:
    if hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act={hidden_act!r} is not supported; expected one of {ACTIVATIONS}")
    return quick_gelu if hidden_act == "quick_gelu" else None


class ClipEmbed(nn.Module):
    """Patches -> tokens: ``patch`` (a convolution without bias), ``cls``, ``pos_embedding``, then ``norm``
    (Hugging Face's ``pre_layrnorm``)."""

    patch_size: int | tuple[int, int]
    hidden_size: int
    layer_norm_eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = pair(self.patch_size)
        x = nn.Conv(self.hidden_size, p, strides=p, padding="VALID", use_bias=False, dtype=self.dtype, name="patch")(
            images
        )
        batch, h, w, width = x.shape
        cls = self.param("cls", nn.initializers.normal(stddev=0.02), (1, 1, width), jnp.float32)
        x = jnp.concatenate(
            [jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, width)), x.reshape(batch, h * w, width)], 1
        )
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, x.shape[1], width), jnp.float32)
        return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x + pos.astype(x.dtype))


class Clip(ImageInputs, nn.Module):
    """CLIP's vision tower over NHWC images, with a linear ``head`` when ``num_classes`` > 0.

    ``pooling="cls"``: the class token, ``norm``, then ``proj`` to ``projection_dim`` (``None``: no projection);
    ``"mean"``: the mean patch token of the last block (``CLIPForImageClassification``). ``normalize`` divides the
    pooled features by their L2 norm before the head, as CLIP's zero-shot classifier does
    (:func:`jtl.models.clip.zero_shot_classifier`). Hidden states are sown as
    ``intermediates/encoder/hidden_states`` (the normed embeddings, then each block's output).

    >>> import jax, jax.numpy as jnp
    >>> model = Clip(patch_size=4, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16, image_size=8,
    ...              projection_dim=6)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    >>> model.apply(variables, jnp.ones((2, 8, 8, 3))).shape  # the image embeddings
    (2, 6)
    """

    patch_size: int | tuple[int, int] = 32
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    image_size: int | tuple[int, int] = 224
    num_channels: int = 3
    num_classes: int = 0
    projection_dim: int | None = 512
    pooling: str = "cls"
    normalize: bool = False
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # each block's rematerialisation in training: "none", "full" or "dots_saveable"
    scan_layers: bool = False  # the blocks as one jax.lax.scan over their stacked params (same names)

    @property
    def gelu_approximate(self) -> bool:
        return self.hidden_act in _TANH_GELUS

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling={self.pooling!r}: expected 'cls' or 'mean'")
        x = ClipEmbed(self.patch_size, self.hidden_size, self.layer_norm_eps, self.dtype, name="embed")(
            images.astype(self.dtype)
        )
        encoder = transformer_encoder(
            self,
            mlp_dim=self.mlp_dim,
            pre_norm=True,
            drop_path_rate=self.drop_path_rate,
            activation=_activation(self.hidden_act),
        )
        x = encoder(x, train=train)
        if self.pooling == "mean":
            return tower_head(self, x[:, 1:].mean(axis=1))
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x[:, 0])
        if self.projection_dim:
            x = nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype, name="proj")(x)
        return tower_head(self, x)


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """Where CLIP's text tower pools, as Hugging Face picks it: the first ``eos_token_id``; or, for configs with
    the legacy ``eos_token_id == 2`` (openai/clip-*), the largest token id (the end-of-text token is the last of
    the vocabulary).

    Args:
      input_ids: (batch, length) token ids.
      eos_token_id: the config's end-of-text id.

    Returns:
      (batch,) positions.

    >>> eos_positions(jnp.array([[49406, 320, 49407, 49407]]), 49407).tolist(), eos_positions(
    ...     jnp.array([[49406, 320, 49407, 0]]), 2).tolist()
    ([2], [2])
    """
    if eos_token_id == 2:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class ClipText(TokenInputs, nn.Module):
    """CLIP's text tower over token ids: ``embed/word`` and ``embed/position`` tables, causal pre-norm blocks,
    ``norm``, the end-of-text token's state (:func:`eos_positions`), then ``proj`` to ``projection_dim`` (``None``:
    none) and a linear ``head`` when ``num_classes`` > 0. ``normalize`` divides the pooled features by their L2
    norm. Hidden states are sown as ``intermediates/encoder/hidden_states``.

    >>> import jax, jax.numpy as jnp
    >>> model = ClipText(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16,
    ...                  max_position_embeddings=6, projection_dim=4, eos_token_id=9)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> model.apply(variables, jnp.array([[8, 3, 9, 0]]), jnp.array([[1, 1, 1, 0]])).shape
    (1, 4)
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    num_layers: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    max_position_embeddings: int = 77
    eos_token_id: int = 49407
    num_classes: int = 0
    projection_dim: int | None = 512
    normalize: bool = False
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # each block's rematerialisation in training: "none", "full" or "dots_saveable"
    scan_layers: bool = False  # the blocks as one jax.lax.scan over their stacked params (same names)

    @property
    def gelu_approximate(self) -> bool:
        return self.hidden_act in _TANH_GELUS

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        length = input_ids.shape[1]
        x = ClipTextEmbed(self.vocab_size, self.hidden_size, self.max_position_embeddings, self.dtype, name="embed")(
            input_ids
        )
        mask = jnp.tril(jnp.ones((length, length), bool))[None]
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, :].astype(bool)
        encoder = transformer_encoder(
            self,
            mlp_dim=self.mlp_dim,
            pre_norm=True,
            drop_path_rate=self.drop_path_rate,
            activation=_activation(self.hidden_act),
        )
        x = encoder(x, jnp.broadcast_to(mask, (x.shape[0], length, length)), train=train)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
        x = x[jnp.arange(x.shape[0]), eos_positions(input_ids, self.eos_token_id)]
        if self.projection_dim:
            x = nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype, name="proj")(x)
        return tower_head(self, x)


# name: (patch, hidden, depth, heads, MLP, text hidden, text heads, projection), as openai/clip-vit-* give them.
SIZES = {
    "b32": (32, 768, 12, 12, 3072, 512, 8, 512),
    "b16": (16, 768, 12, 12, 3072, 512, 8, 512),
    "l14": (14, 1024, 24, 16, 4096, 768, 12, 768),
}


def layer_index(model: Clip | ClipText) -> tuple[Callable[[str], int], int]:
    """Embeddings are layer 0, ``encoder/block_{i}`` layer ``i + 1``, the final norm, projection and head the top."""
    return block_layer_index(model.num_layers), model.num_layers + 1


def feature_maps(model: Clip, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """Chosen blocks' patch tokens on the patch grid, the class token dropped (see :func:`jtl.models.feature_maps`)."""
    grid = patch_grid(model.image_size, model.patch_size)
    return token_feature_maps(intermediates["encoder"]["hidden_states"], grid, 1, layers)


def _configs() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    vision, text = {}, {}
    for size, (patch, hidden, depth, heads, mlp, text_hidden, text_heads, projection) in SIZES.items():
        vision[f"clip-vit-{size}"] = {
            "patch_size": patch,
            "hidden_size": hidden,
            "num_layers": depth,
            "num_heads": heads,
            "mlp_dim": mlp,
            "projection_dim": projection,
        }
        text[f"clip-text-{size}"] = {
            "hidden_size": text_hidden,
            "num_layers": 12,
            "num_heads": text_heads,
            "mlp_dim": 4 * text_hidden,
            "projection_dim": projection,
        }
    small = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "mlp_dim": 32, "projection_dim": 8}
    vision["clip-testing"] = {**small, "patch_size": 4, "image_size": 16}
    text["clip-text-testing"] = {**small, "vocab_size": 64, "max_position_embeddings": 16, "eos_token_id": 63}
    return vision, text


CONFIGS, TEXT_CONFIGS = _configs()
