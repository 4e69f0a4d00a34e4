"""Swin Transformer (Liu et al., 2021) as Hugging Face's ``SwinForImageClassification`` computes it.

A hierarchical vision transformer: patches are embedded (convolution + LayerNorm), then stages of blocks attend
within non-overlapping windows (every second block with windows shifted by half a window, an attention mask
keeping the wrapped-around regions apart), each window's logits biased by a learned table indexed by relative
position; between stages, patch merging halves the grid and doubles the width. The pooled features are the mean
of the last stage's tokens after the final norm.

Parameter names: ``embed/{patch,norm,pos_embedding}``, ``stage_{s}/block_{i}/{norm1,attn,norm2,mlp}`` with
``attn/{query,key,value,out,rel_pos_embedding}``, ``stage_{s}/downsample/{norm,reduction}``, ``norm``, ``head``.
The relative position tables are called ``rel_pos_embedding`` so that :func:`jtl.masking.weight_decay_mask` leaves
them out, as timm's Swin does; their index is computed, never loaded (Hugging Face does not save it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.models._layers import DropPath, ImageInputs, Mlp, features_head, pair, patch_grid

# name: (embed_dim, depths, heads, window, image size), as Hugging Face's microsoft/swin-* configs give them.
SIZES = {
    "swin-tiny-224": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "swin-small-224": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
    "swin-base-224": (128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224),
    "swin-base-384": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
    "swin-large-224": (192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 224),
    "swin-large-384": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
}


def relative_position_index(window: int) -> np.ndarray:
    """The (window², window²) index into a ((2 window - 1)², heads) relative position table, as Swin computes it.

    Args:
      window: the window's side.

    Returns:
      The int index: row ``i`` (query position), column ``j`` (key position).

    >>> relative_position_index(2).tolist()
    [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    """
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """The additive mask of shifted-window attention: -100 between tokens that the cyclic shift brought together
    from different regions, else 0 (Hugging Face's ``get_attn_mask``).

    Args:
      height: the padded feature map's height, a multiple of ``window``.
      width: its width, likewise.
      window: the window's side.
      shift: the cyclic shift.

    Returns:
      The (windows, window², window²) float32 mask.

    >>> shifted_window_mask(4, 4, 2, 1).shape, float(shifted_window_mask(4, 4, 2, 1).min())
    ((4, 4, 4), -100.0)
    """

    def regions(size: int) -> np.ndarray:
        index = np.arange(size)
        return (index >= size - window).astype(np.int64) + (index >= size - shift)

    image = (regions(height)[:, None] * 3 + regions(width)[None, :])[None, :, :, None]
    windows = _partition(image, window).reshape(-1, window * window)
    return np.where(windows[:, None, :] != windows[:, :, None], -100.0, 0.0).astype(np.float32)


def _partition(x: Any, window: int) -> Any:
    """(B, H, W, C) -> (B * windows, window, window, C), windows in row-major order (numpy or jax)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c)


def _unpartition(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """The inverse of :func:`_partition`."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def shifted_window_attention(
    x: jax.Array, window: int, shift: int, attend: Callable[[jax.Array, np.ndarray | None], jax.Array]
) -> jax.Array:
    """(Shifted-)window attention over an (N, H, W, C) map, as Hugging Face's Swin and Swin V2 layers run it: the
    map zero-padded to whole windows, cyclically shifted up-left by ``shift`` (the regions it brings together masked
    by :func:`shifted_window_mask`), partitioned, ``attend(windows, mask)`` on the (windows, window², C) tokens,
    then merged, shifted back and cropped to (H, W).

    Args:
      x: the (N, H, W, C) map.
      window: the window's side.
      shift: the cyclic shift (0: none, and no mask).
      attend: the attention (with whatever dropout follows it), from windows and the mask (or None).

    Returns:
      The (N, H, W, C) attended map.

    >>> y = shifted_window_attention(jnp.ones((1, 3, 3, 2)), 2, 1, lambda windows, mask: windows * 2)
    >>> y.shape, float(y.max())
    ((1, 3, 3, 2), 2.0)
    """
    _, height, width, channels = x.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    y = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    if shift:
        y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
    mask = shifted_window_mask(height + pad_h, width + pad_w, window, shift) if shift else None
    windows = attend(_partition(y, window).reshape(-1, window * window, channels), mask)
    y = _unpartition(windows.reshape(-1, window, window, channels), window, height + pad_h, width + pad_w)
    if shift:
        y = jnp.roll(y, (shift, shift), axis=(1, 2))
    return y[:, :height, :width]


class WindowAttention(nn.Module):
    """Multi-head attention within windows, with a learned relative position bias (``rel_pos_embedding``)."""

    num_heads: int
    window_size: int
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: np.ndarray | None, *, train: bool = False) -> jax.Array:
        windows, length, width = x.shape
        head_dim = width // self.num_heads

        def project(name: str, bias: bool = True) -> jax.Array:
            y = nn.Dense(width, use_bias=bias, dtype=self.dtype, name=name)(x)
            return y.reshape(windows, length, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = project("query", self.qkv_bias), project("key", self.qkv_bias), project("value", self.qkv_bias)
        side = 2 * self.window_size - 1
        table = self.param(
            "rel_pos_embedding", nn.initializers.truncated_normal(0.02), (side * side, self.num_heads), jnp.float32
        )
        bias = table[relative_position_index(self.window_size).reshape(-1)]
        bias = bias.reshape(length, length, self.num_heads).transpose(2, 0, 1)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) * (head_dim**-0.5) + bias
        if mask is not None:
            logits = logits.reshape(-1, mask.shape[0], self.num_heads, length, length) + mask[None, :, None]
            logits = logits.reshape(windows, self.num_heads, length, length)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3).reshape(windows, length, width)
        return nn.Dense(width, dtype=self.dtype, name="out")(out)


class SwinBlock(nn.Module):
    """A (shifted-)window attention block on an (N, H, W, C) map: pre-norm attention and MLP residuals.

    As Hugging Face's ``SwinLayer``: the normalised map is zero-padded to whole windows; a map no larger than the
    window (in its smaller side) is attended as one unshifted window unless ``always_partition`` (what
    ``SwinBackbone`` passes); stochastic depth drops the attention branch only.
    """

    num_heads: int
    window_size: int
    shift: bool
    mlp_dim: int
    layer_norm_eps: float = 1e-5
    gelu_approximate: bool = False
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    always_partition: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        _, height, width, _ = x.shape
        window, shift = self.window_size, self.window_size // 2 if self.shift else 0
        if not self.always_partition and min(height, width) <= window:
            window, shift = min(height, width), 0
            if window != self.window_size:
                # Hugging Face fails here too: its bias table is for the configured window.
                raise ValueError(
                    f"a {height}x{width} feature map is smaller than the {self.window_size}x{self.window_size} "
                    "window; use a larger image or always_partition=True"
                )
        drop = nn.Dropout(self.dropout_rate)
        attn = WindowAttention(
            self.num_heads, self.window_size, self.qkv_bias, self.attention_dropout_rate, self.dtype, name="attn"
        )

        def attend(windows: jax.Array, mask: np.ndarray | None) -> jax.Array:
            return drop(attn(windows, mask, train=train), deterministic=not train)

        y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x)
        x = x + DropPath(self.drop_path_rate)(shifted_window_attention(y, window, shift, attend), train=train)
        mlp = Mlp(self.mlp_dim, self.gelu_approximate, 0.0, dtype=self.dtype, name="mlp")
        y = mlp(nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x), train=train)
        return x + drop(y, deterministic=not train)


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (the map zero-padded to even sides), ``norm``, then ``reduction`` to
    twice the width; with ``reduce_first`` (Swin V2), ``reduction`` then ``norm``."""

    dtype: jnp.dtype = jnp.float32
    reduce_first: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, height, width, channels = x.shape
        x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")
        reduction = nn.Dense(2 * channels, use_bias=False, dtype=self.dtype, name="reduction")
        return norm(reduction(x)) if self.reduce_first else reduction(norm(x))


class SwinEmbed(nn.Module):
    """Patches (the image zero-padded to whole patches) -> ``patch`` convolution -> ``norm``, plus absolute
    ``pos_embedding`` when the model has them; returns the (N, H, W, C) map."""

    patch_size: tuple[int, int]
    embed_dim: int
    num_positions: tuple[int, int] | None
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        (ph, pw), (_, height, width, _) = self.patch_size, images.shape
        images = jnp.pad(images, ((0, 0), (0, (-height) % ph), (0, (-width) % pw), (0, 0)))
        x = nn.Conv(self.embed_dim, (ph, pw), strides=(ph, pw), padding="VALID", dtype=self.dtype, name="patch")(images)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
        if self.num_positions is not None:
            rows, columns = self.num_positions
            shape = (1, rows * columns, self.embed_dim)
            pos = self.param("pos_embedding", nn.initializers.truncated_normal(0.02), shape, jnp.float32)
            if x.shape[1:3] != (rows, columns):
                raise ValueError(
                    f"a {x.shape[1]}x{x.shape[2]} patch grid needs position embeddings for it (image_size="
                    f"{rows * self.patch_size[0]}x{columns * self.patch_size[1]} holds {rows}x{columns})"
                )
            x = x + pos.reshape(1, rows, columns, -1).astype(x.dtype)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class Swin(ImageInputs, nn.Module):
    """A Swin Transformer over NHWC images, with a linear ``head`` when ``num_classes`` > 0.

    Sown as ``intermediates``: ``hidden_states`` (the embeddings, then each stage's output after patch merging, as
    Hugging Face's ``reshaped_hidden_states`` but NHWC), ``stage_features`` (each stage's output before merging,
    the backbone's feature maps) and ``features`` (the pooled features).

    >>> import jax, jax.numpy as jnp
    >>> model = Swin(patch_size=2, embed_dim=8, depths=(2, 1), num_heads=(2, 4), window_size=2, image_size=8)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    >>> model.apply(variables, jnp.ones((2, 8, 8, 3))).shape  # the mean of the last stage's tokens
    (2, 16)
    """

    patch_size: int | tuple[int, int] = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    image_size: int | tuple[int, int] = 224
    num_channels: int = 3
    num_classes: int = 0
    qkv_bias: bool = True
    use_absolute_embeddings: bool = False
    gelu_approximate: bool = False
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    always_partition: bool = False
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32

    def _block(self, stage: int, index: int, drop_path_rate: float) -> nn.Module:
        width = self.embed_dim * 2**stage
        return SwinBlock(
            num_heads=self.num_heads[stage],
            window_size=self.window_size,
            shift=index % 2 == 1,
            mlp_dim=int(self.mlp_ratio * width),
            layer_norm_eps=self.layer_norm_eps,
            gelu_approximate=self.gelu_approximate,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            qkv_bias=self.qkv_bias,
            drop_path_rate=drop_path_rate,
            always_partition=self.always_partition,
            dtype=self.dtype,
            parent=None,
        )

    def _embed(self) -> nn.Module:
        positions = patch_grid(self.image_size, self.patch_size) if self.use_absolute_embeddings else None
        return SwinEmbed(pair(self.patch_size), self.embed_dim, positions, self.dropout_rate, self.dtype, name="embed")

    def _merge(self) -> nn.Module:
        return PatchMerging(self.dtype, parent=None)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        x = self._embed()(images.astype(self.dtype), train=train)
        self.sow("intermediates", "hidden_states", x)
        total = sum(self.depths)
        rates = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        for s, depth in enumerate(self.depths):
            offset = sum(self.depths[:s])
            blocks = tuple(self._block(s, i, rates[offset + i]) for i in range(depth))
            merge = self._merge() if s < len(self.depths) - 1 else None
            before, x = _Stage(blocks, merge, name=f"stage_{s}")(x, train=train)
            self.sow("intermediates", "stage_features", before)
            self.sow("intermediates", "hidden_states", x)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
        x = x.mean(axis=(1, 2))
        return features_head(self, x)


class _Stage(nn.Module):
    """One stage: its blocks, then (but in the last stage) the patch merging; returns (before, after) merging."""

    blocks: tuple[nn.Module, ...]
    merge: nn.Module | None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        for i, block in enumerate(self.blocks):
            x = block.clone(parent=self, name=f"block_{i}")(x, train=train)
        if self.merge is None:
            return x, x
        return x, self.merge.clone(parent=self, name="downsample")(x)


def swin_config(name: str) -> dict:
    """Architecture fields for ``swin-{tiny,small,base,large}-{224,384}`` (patch 4; window 7 at 224, 12 at 384).

    Args:
      name: the registry name.

    Returns:
      The architecture fields, as ``Swin``'s keyword arguments.

    >>> swin_config("swin-base-384")["window_size"], swin_config("swin-tiny-224")["depths"]
    (12, (2, 2, 6, 2))
    """
    if name not in SIZES:
        raise ValueError(f"unknown Swin name {name!r}; known: {sorted(SIZES)}")
    embed_dim, depths, heads, window, image_size = SIZES[name]
    return {
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "image_size": image_size,
    }


_STAGE_PART = re.compile(r"stage_(\d+)/(?:block_(\d+)|downsample)/.*")


def layer_index(model: Swin) -> tuple[Callable[[str], int], int]:
    """Embeddings are layer 0, blocks count up from 1 through the stages (``stage_{s}/block_{i}`` is
    ``sum(depths[:s]) + i + 1``), a stage's patch merging counts with the next stage's first block (it feeds it),
    the final norm and head are the top.

    >>> layer_of, top = layer_index(Swin(depths=(2, 2, 6, 2)))
    >>> layer_of("embed/norm/scale"), layer_of("stage_1/block_1/attn/query/kernel"), layer_of("stage_1/downsample/x")
    (0, 4, 5)
    >>> layer_of("norm/scale"), top
    (13, 13)
    """
    offsets = [sum(model.depths[:s]) for s in range(len(model.depths) + 1)]
    top = sum(model.depths) + 1

    def swin_layer(name: str) -> int:
        if name.startswith("embed/"):
            return 0
        match = _STAGE_PART.fullmatch(name)
        if match is None:
            return top
        stage, block = int(match.group(1)), match.group(2)
        return offsets[stage] + int(block) + 1 if block is not None else offsets[stage + 1] + 1

    return swin_layer, top


def feature_maps(model: Swin, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """The embeddings (``stem``) and each chosen stage's output before patch merging, as ``SwinBackbone``'s
    ``hidden_states`` (its ``feature_maps`` add per-stage LayerNorms of its own, which a detection head brings; see
    :func:`jtl.models.feature_maps`)."""
    stages = intermediates["stage_features"]
    chosen = {"stem": intermediates["hidden_states"][0]} if layers is None else {}
    chosen.update({f"stage_{s}": stages[s] for s in (range(len(stages)) if layers is None else layers)})
    return chosen


def _configs() -> dict[str, dict[str, Any]]:
    configs = {name: swin_config(name) for name in SIZES}
    configs["swin-testing"] = {
        "patch_size": 2,
        "embed_dim": 8,
        "depths": (2, 2),
        "num_heads": (2, 4),
        "window_size": 2,
        "image_size": 16,
    }
    return configs


CONFIGS = _configs()
