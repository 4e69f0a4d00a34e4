"""SigLIP (Zhai et al., 2023) and SigLIP 2 (Tschannen et al., 2025) as Hugging Face's ``SiglipVisionModel`` /
``SiglipTextModel``, ``Siglip2VisionModel`` / ``Siglip2TextModel`` and their ``*ForImageClassification`` compute
them: two towers, each a registered family (``siglip``: images, ``siglip-text``: token ids).

``Siglip`` is the vision tower: patch embedding, position embeddings (no class token), pre-norm blocks, ``norm``
(``post_layernorm``) over every token, then ``pool``, the multi-head attention-pooling head (Hugging Face's
``vision_model.head``, renamed so that ``head`` stays the classifier): a learned ``pool/probe`` attends over the
tokens (``pool/attn_qkv``, ``pool/attn_out``), then ``pool/norm`` and a residual ``pool/mlp``. ``pooling="mean"``
is ``SiglipForImageClassification``'s: the mean token.

SigLIP 2 (``naflex=True``) embeds flattened patches with a linear layer and resizes its square grid of position
embeddings to each image's patch grid (bilinear, antialiased, as ``Siglip2VisionEmbeddings`` computes it) on
every call: the model takes NHWC images of any size whose sides are multiples of the patch, or, as Hugging Face's
NaFlex processor gives them, patches ``(N, L, p * p * C)`` with ``pixel_attention_mask`` ``(N, L)`` and
``spatial_shapes`` ``(N, 2)``.

``SiglipText`` is the text tower: bidirectional blocks over the padding mask, ``norm``, the LAST position's state,
then ``proj`` (Hugging Face's ``text_model.head``, a linear layer with bias).
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
    Mlp,
    PatchEmbed,
    TokenInputs,
    pair,
    patch_grid,
    token_feature_maps,
    transformer_encoder,
)


def resize_positions(grid: jax.Array, spatial_shapes: jax.Array, length: int) -> jax.Array:
    """SigLIP 2's position embeddings for each image: the (G, G, D) grid resized to the image's (rows, columns)
    patch grid (``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``, written as Hugging Face
    writes it: per-axis weights, then one float32 matmul), laid out row by row and padded to ``length`` (the padding
    takes the first position's embedding).

    Args:
      grid: (G, G, D) position embeddings.
      spatial_shapes: (N, 2) patch grids.
      length: the padded number of patches.

    Returns:
      (N, length, D) position embeddings.

    >>> grid = jnp.arange(16.0).reshape(2, 2, 4)
    >>> resize_positions(grid, jnp.array([[2, 2]]), 5)[0, :, 0].tolist()  # the same grid, then one padding
    [0.0, 4.0, 8.0, 12.0, 0.0]
    """
    size = grid.shape[0]
    sizes = spatial_shapes.astype(jnp.float32)[:, None]  # (N, 1, 2)
    positions = jnp.arange(length, dtype=jnp.float32)[None, :, None]  # (1, L, 1)
    rows = jnp.floor(positions / sizes[..., 1:])
    index = jnp.concatenate([rows, positions - rows * sizes[..., 1:]], axis=-1)  # (N, L, 2)
    index = index * (positions < jnp.prod(sizes, axis=-1, keepdims=True))
    scale = size / sizes
    support = jnp.maximum(scale, 1.0)
    center = (index + 0.5) * scale - 0.5
    source = jnp.arange(size, dtype=jnp.float32)
    weights = jnp.maximum(1 - jnp.abs(source - center[..., None]) / support[..., None], 0)  # (N, L, 2, G)
    weights = weights / weights.sum(-1, keepdims=True)
    weights = (weights[..., 0, :, None] * weights[..., 1, None, :]).reshape(*weights.shape[:2], size * size)
    flat = grid.reshape(size * size, -1).astype(jnp.float32)
    return jnp.matmul(weights, flat, precision=jax.lax.Precision.HIGHEST)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """NHWC images -> (N, rows * columns, p * p * C) patches, each flattened (row, column, channel), the order of
    Hugging Face's SigLIP 2 image processor.

    Args:
      images: (N, H, W, C), sides multiples of ``patch_size``.
      patch_size: the patch side.

    Returns:
      The patches, row by row.

    >>> patchify(jnp.zeros((2, 8, 12, 3)), 4).shape
    (2, 6, 48)
    """
    n, h, w, c = images.shape
    p = patch_size
    x = images.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


class NaflexEmbed(nn.Module):
    """SigLIP 2's embeddings: ``patch`` (a linear layer on flattened patches) plus ``pos_embedding`` (a square grid
    of ``num_positions``) resized to each image's grid."""

    hidden_size: int
    num_positions: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, patches: jax.Array, spatial_shapes: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden_size, dtype=self.dtype, name="patch")(patches)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), (1, self.num_positions, self.hidden_size), jnp.float32
        )
        side = round(self.num_positions**0.5)
        grid = pos[0].reshape(side, side, self.hidden_size)
        return x + resize_positions(grid, spatial_shapes, patches.shape[1]).astype(x.dtype)


class AttentionPool(nn.Module):
    """SigLIP's multi-head attention pooling: a learned ``probe`` attends over the tokens (``attn_qkv``, the fused
    input projection of ``torch.nn.MultiheadAttention``, and ``attn_out``), then ``norm`` and a residual ``mlp``."""

    num_heads: int
    mlp_dim: int
    layer_norm_eps: float
    gelu_approximate: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        batch, _, width = x.shape
        head_dim = width // self.num_heads
        probe = self.param("probe", nn.initializers.normal(stddev=0.02), (1, 1, width), jnp.float32)
        qkv = nn.Dense(3 * width, dtype=self.dtype, name="attn_qkv")

        def heads(y: jax.Array) -> jax.Array:
            return y.reshape(y.shape[0], y.shape[1], self.num_heads, head_dim).transpose(0, 2, 1, 3)

        q = heads(qkv(jnp.broadcast_to(probe.astype(x.dtype), (batch, 1, width)))[..., :width])
        kv = qkv(x)
        k, v = heads(kv[..., width : 2 * width]), heads(kv[..., 2 * width :])
        logits = jnp.einsum("bhqd,bhkd->bhqk", q / jnp.sqrt(jnp.asarray(head_dim, q.dtype)), k).astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask[:, None, None, :].astype(bool), logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3).reshape(batch, 1, width)
        y = nn.Dense(width, dtype=self.dtype, name="attn_out")(out)
        norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")
        y = y + Mlp(self.mlp_dim, self.gelu_approximate, dtype=self.dtype, name="mlp")(norm(y))
        return y[:, 0]


class Siglip(ImageInputs, nn.Module):
    """SigLIP's (``naflex``: SigLIP 2's) vision tower, with a linear ``head`` when ``num_classes`` > 0.

    ``pooling="map"``: the attention-pooling head ``pool``; ``"mean"``: the mean token (over the real patches for
    NaFlex inputs), as ``Siglip[2]ForImageClassification``. ``normalize`` divides the pooled features by their L2
    norm before the head (:func:`jtl.models.siglip.zero_shot_classifier`). Hidden states are sown as
    ``intermediates/encoder/hidden_states``.

    >>> import jax, jax.numpy as jnp
    >>> model = Siglip(patch_size=4, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16, image_size=8)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    >>> model.apply(variables, jnp.ones((2, 8, 8, 3))).shape
    (2, 8)
    """

    patch_size: int | tuple[int, int] = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    image_size: int | tuple[int, int] = 224
    num_channels: int = 3
    num_classes: int = 0
    pooling: str = "map"
    normalize: bool = False
    naflex: bool = False
    num_positions: int | None = None
    gelu_approximate: bool = True
    layer_norm_eps: float = 1e-6
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # each block's rematerialisation in training: "none", "full" or "dots_saveable"
    scan_layers: bool = False  # the blocks as one jax.lax.scan over their stacked params (same names)

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        pixel_attention_mask: jax.Array | None = None,
        spatial_shapes: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        if self.pooling not in ("map", "mean"):
            raise ValueError(f"pooling={self.pooling!r}: expected 'map' or 'mean'")
        mask = pixel_attention_mask
        if not self.naflex:
            if images.ndim != 4 or mask is not None or spatial_shapes is not None:
                raise ValueError("SigLIP (naflex=False) takes NHWC images only; patches with masks are SigLIP 2's")
            x = PatchEmbed(self.patch_size, self.hidden_size, False, self.dropout_rate, self.dtype, name="embed")(
                images.astype(self.dtype), train=train
            )
        else:
            p = pair(self.patch_size)
            if p[0] != p[1]:
                raise ValueError(f"SigLIP 2 takes square patches, not {p}")
            if images.ndim == 4:
                if mask is not None or spatial_shapes is not None:
                    raise ValueError("NHWC images come without pixel_attention_mask/spatial_shapes (patches do)")
                grid = (images.shape[1] // p[0], images.shape[2] // p[0])
                spatial_shapes = jnp.broadcast_to(jnp.array(grid), (images.shape[0], 2))
                images = patchify(images, p[0])
            elif mask is None or spatial_shapes is None:
                raise ValueError("patches (N, L, p * p * C) need pixel_attention_mask and spatial_shapes")
            num_positions = self.num_positions or patch_grid(self.image_size, p)[0] ** 2
            x = NaflexEmbed(self.hidden_size, num_positions, self.dtype, name="embed")(
                images.astype(self.dtype), spatial_shapes
            )
        encoder = transformer_encoder(self, mlp_dim=self.mlp_dim, pre_norm=True, drop_path_rate=self.drop_path_rate)
        x = encoder(x, mask, train=train)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
        if self.pooling == "mean":
            if mask is None:
                return tower_head(self, x.mean(axis=1))
            weights = mask[..., None].astype(x.dtype)
            return tower_head(self, (x * weights).sum(axis=1) / weights.sum(axis=1))
        pool = AttentionPool(
            self.num_heads, self.mlp_dim, self.layer_norm_eps, self.gelu_approximate, self.dtype, name="pool"
        )
        return tower_head(self, pool(x, mask))


class SiglipText(TokenInputs, nn.Module):
    """SigLIP's text tower: ``embed/word`` and ``embed/position`` tables, bidirectional blocks (padding masked),
    ``norm``, the last position's state, ``proj`` (with bias; ``projection_dim=None``: none) and a linear ``head``
    when ``num_classes`` > 0. Hidden states are sown as ``intermediates/encoder/hidden_states``.

    >>> import jax, jax.numpy as jnp
    >>> model = SiglipText(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16,
    ...                    max_position_embeddings=6, projection_dim=4)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> model.apply(variables, jnp.array([[8, 3, 9, 1]]), jnp.array([[1, 1, 1, 1]])).shape
    (1, 4)
    """

    vocab_size: int = 32000
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_position_embeddings: int = 64
    num_classes: int = 0
    projection_dim: int | None = 768
    normalize: bool = False
    gelu_approximate: bool = True
    layer_norm_eps: float = 1e-6
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # each block's rematerialisation in training: "none", "full" or "dots_saveable"
    scan_layers: bool = False  # the blocks as one jax.lax.scan over their stacked params (same names)

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        x = ClipTextEmbed(self.vocab_size, self.hidden_size, self.max_position_embeddings, self.dtype, name="embed")(
            input_ids
        )
        encoder = transformer_encoder(self, mlp_dim=self.mlp_dim, pre_norm=True, drop_path_rate=self.drop_path_rate)
        x = encoder(x, attention_mask, train=train)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)[:, -1]
        if self.projection_dim:
            x = nn.Dense(self.projection_dim, dtype=self.dtype, name="proj")(x)
        return tower_head(self, x)


def layer_index(model: Siglip | SiglipText) -> tuple[Callable[[str], int], int]:
    """Embeddings are layer 0, ``encoder/block_{i}`` layer ``i + 1``; the final norm, the attention pooling,
    the projection and the head the top."""
    return block_layer_index(model.num_layers), model.num_layers + 1


def feature_maps(model: Siglip, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """Chosen blocks' patch tokens on the patch grid (see :func:`jtl.models.feature_maps`); NHWC inputs only."""
    grid = patch_grid(model.image_size, model.patch_size)
    return token_feature_maps(intermediates["encoder"]["hidden_states"], grid, 0, layers)


# name: (patch, image size, hidden, depth, heads, MLP), as google/siglip-* and google/siglip2-* give them.
_SIZES = {
    "siglip-b16-224": (16, 224, 768, 12, 12, 3072),
    "siglip-b16-384": (16, 384, 768, 12, 12, 3072),
    "siglip-l16-256": (16, 256, 1024, 24, 16, 4096),
    "siglip-so400m14-384": (14, 384, 1152, 27, 16, 4304),
    "siglip2-b16-224": (16, 224, 768, 12, 12, 3072),
    "siglip2-b16-256": (16, 256, 768, 12, 12, 3072),
    "siglip2-so400m14-384": (14, 384, 1152, 27, 16, 4304),
}
_TEXT_SIZES = {"b": (768, 12, 12, 3072), "l": (1024, 24, 16, 4096), "so400m": (1152, 27, 16, 4304)}


def _configs() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    vision, text = {}, {}
    for name, (patch, image, hidden, depth, heads, mlp) in _SIZES.items():
        fields = {"hidden_size": hidden, "num_layers": depth, "num_heads": heads, "mlp_dim": mlp}
        vision[name] = {**fields, "patch_size": patch, "image_size": image}
        if name.startswith("siglip2"):
            vision[name].update(naflex=True, num_positions=(image // patch) ** 2)
        size = name.split("-")[1].rstrip("0123456789")
        t_hidden, t_depth, t_heads, t_mlp = _TEXT_SIZES[size]
        text[name.replace("-", "-text-", 1)] = {
            "hidden_size": t_hidden,
            "num_layers": t_depth,
            "num_heads": t_heads,
            "mlp_dim": t_mlp,
            "projection_dim": t_hidden if size != "so400m" else hidden,
            "vocab_size": 256000 if name.startswith("siglip2") else 32000,
        }
    small = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "mlp_dim": 32}
    vision["siglip-testing"] = {**small, "patch_size": 4, "image_size": 16}
    vision["siglip2-testing"] = {**small, "patch_size": 4, "image_size": 16, "naflex": True, "num_positions": 16}
    text["siglip-text-testing"] = {**small, "vocab_size": 64, "max_position_embeddings": 16, "projection_dim": 16}
    return vision, text


CONFIGS, TEXT_CONFIGS = _configs()
