"""BEiT (Bao et al., 2022) as Hugging Face's ``BeitForImageClassification`` computes it.

A pre-norm ViT whose attention logits carry a learned relative position bias (a table per block, or one shared
by all blocks, or both), whose key projection has no bias, and whose residual branches carry LayerScale
(``lambda_1``/``lambda_2``). The pooled features are the LayerNormed mean of the patch tokens
(``use_mean_pooling``), or the class token after a final LayerNorm. The masked-image-modelling mask token is not
used. Parameter names are ViT's (``embed/{patch,cls,pos_embedding}``, ``encoder/block_{i}/attn/{query,key,value,
out}``, ``.../mlp/fc{1,2}``, ``norm``, ``head``) plus ``encoder/block_{i}/scale{1,2}/scale``, the tables
``encoder/block_{i}/attn/rel_pos_embedding`` and the shared ``embed/rel_pos_embedding`` (named so that
:func:`jtl.masking.weight_decay_mask` leaves them out, as timm's BEiT does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.masking import block_layer_index
from jtl.models._layers import (
    DropPath,
    ImageInputs,
    LayerScale,
    Mlp,
    features_head,
    pair,
    patch_grid,
    token_feature_maps,
)

# name: (hidden size, depth, heads, MLP width), as Hugging Face's microsoft/beit-* configs give them.
SIZES = {"beit-base-patch16-224": (768, 12, 12, 3072), "beit-large-patch16-224": (1024, 24, 16, 4096)}


def relative_position_index(grid: tuple[int, int]) -> np.ndarray:
    """The (N + 1, N + 1) index (class token first) into a BEiT relative position table of
    ``(2 rows - 1) (2 columns - 1) + 3`` entries, the last three for class-to-token, token-to-class and
    class-to-class, as Hugging Face's ``generate_relative_position_index``.

    Args:
      grid: the patch grid (rows, columns).

    Returns:
      The int index.

    >>> relative_position_index((1, 2)).tolist()
    [[5, 3, 3], [4, 1, 0], [4, 2, 1]]
    """
    rows, columns = grid
    count = (2 * rows - 1) * (2 * columns - 1) + 3
    coords = np.stack(np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")).reshape(2, -1)
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
    index = np.zeros((rows * columns + 1,) * 2, np.int64)
    index[1:, 1:] = (relative[:, :, 0] + rows - 1) * (2 * columns - 1) + relative[:, :, 1] + columns - 1
    index[0, :], index[:, 0], index[0, 0] = count - 3, count - 2, count - 1
    return index


def relative_position_bias(table: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """A relative position table looked up for a patch grid: the (heads, N + 1, N + 1) bias of the logits."""
    index = relative_position_index(grid)
    return table[index.reshape(-1)].reshape(*index.shape, -1).transpose(2, 0, 1)


def _table(module: nn.Module, grid: tuple[int, int], heads: int) -> jax.Array:
    size = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    return module.param("rel_pos_embedding", nn.initializers.zeros, (size, heads), jnp.float32)


class BeitAttention(nn.Module):
    """Self-attention with biases on the query and value projections only, plus a relative position bias (the
    block's own table when ``relative_position_bias``, and the shared one passed in)."""

    num_heads: int
    grid: tuple[int, int]
    relative_position_bias: bool = True
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None, *, train: bool = False) -> jax.Array:
        batch, length, width = x.shape
        head_dim = width // self.num_heads

        def project(name: str, use_bias: bool) -> jax.Array:
            y = nn.Dense(width, use_bias=use_bias, dtype=self.dtype, name=name)(x)
            return y.reshape(batch, length, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = project("query", True), project("key", False), project("value", True)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) * (head_dim**-0.5)
        if self.relative_position_bias:
            logits = logits + relative_position_bias(_table(self, self.grid, self.num_heads), self.grid)
        if bias is not None:
            logits = logits + bias
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        return nn.Dense(width, dtype=self.dtype, name="out")(out)


class BeitBlock(nn.Module):
    """A pre-norm block whose branches are dropped out, LayerScaled (``scale1``/``scale2``, when
    ``layer_scale``) and drop-pathed; ``bias`` is the shared relative position bias (or ``None``)."""

    num_heads: int
    mlp_dim: int
    grid: tuple[int, int]
    layer_norm_eps: float = 1e-12
    relative_position_bias: bool = True
    layer_scale: float | None = 0.1
    gelu_approximate: bool = False
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        attn = BeitAttention(
            self.num_heads, self.grid, self.relative_position_bias, self.attention_dropout_rate, self.dtype, name="attn"
        )
        y = attn(nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x), bias, train=train)
        x = self._residual(x, y, 1, train)
        mlp = Mlp(self.mlp_dim, self.gelu_approximate, 0.0, dtype=self.dtype, name="mlp")
        y = mlp(nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x), train=train)
        return self._residual(x, y, 2, train)

    def _residual(self, x: jax.Array, branch: jax.Array, index: int, train: bool) -> jax.Array:
        branch = nn.Dropout(self.dropout_rate)(branch, deterministic=not train)
        if self.layer_scale:
            branch = LayerScale(self.layer_scale, self.dtype, name=f"scale{index}")(branch)
        return x + DropPath(self.drop_path_rate)(branch, train=train)


class BeitEmbed(nn.Module):
    """``patch`` convolution, the class token ``cls``, absolute ``pos_embedding`` when the model has them, and
    the shared relative position table ``rel_pos_embedding`` when it has one; returns (tokens, shared bias)."""

    patch_size: tuple[int, int]
    hidden_size: int
    num_heads: int
    grid: tuple[int, int]
    absolute_position_embeddings: bool
    shared_relative_position_bias: bool
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array | None]:
        p = self.patch_size
        x = nn.Conv(self.hidden_size, p, strides=p, padding="VALID", dtype=self.dtype, name="patch")(images)
        batch, rows, columns, width = x.shape
        if (rows, columns) != self.grid:
            raise ValueError(f"a {rows}x{columns} patch grid: the model was built for {self.grid} (image_size)")
        cls = self.param("cls", nn.initializers.zeros, (1, 1, width), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, width)), x.reshape(batch, -1, width)], 1)
        if self.absolute_position_embeddings:
            init = nn.initializers.truncated_normal(0.02)
            x = x + self.param("pos_embedding", init, (1, x.shape[1], width), jnp.float32).astype(x.dtype)
        bias = None
        if self.shared_relative_position_bias:
            bias = relative_position_bias(_table(self, self.grid, self.num_heads), self.grid)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train), bias


class Beit(ImageInputs, nn.Module):
    """A BEiT backbone over NHWC images, with a linear ``head`` when ``num_classes`` > 0.

    Hidden states are sown as ``intermediates/encoder/hidden_states`` (the embeddings, then each block's output).

    >>> import jax, jax.numpy as jnp
    >>> model = Beit(patch_size=4, hidden_size=8, num_layers=2, num_heads=2, mlp_dim=16, image_size=8)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    >>> model.apply(variables, jnp.ones((2, 8, 8, 3))).shape  # the normalised mean of the patch tokens
    (2, 8)
    >>> variables["params"]["encoder"]["block_0"]["attn"]["rel_pos_embedding"].shape  # 3x3 offsets + 3, heads
    (12, 2)
    """

    patch_size: int | tuple[int, int] = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    image_size: int | tuple[int, int] = 224
    num_channels: int = 3
    num_classes: int = 0
    absolute_position_embeddings: bool = False
    relative_position_bias: bool = True
    shared_relative_position_bias: bool = False
    layer_scale: float | None = 0.1
    mean_pooling: bool = True
    gelu_approximate: bool = False
    layer_norm_eps: float = 1e-12
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        grid = patch_grid(self.image_size, self.patch_size)
        x, shared_bias = BeitEmbed(
            pair(self.patch_size),
            self.hidden_size,
            self.num_heads,
            grid,
            self.absolute_position_embeddings,
            self.shared_relative_position_bias,
            self.dropout_rate,
            self.dtype,
            name="embed",
        )(images.astype(self.dtype), train=train)
        # Stochastic depth grows linearly with depth, so each block is its own template.
        rates = [self.drop_path_rate * i / max(self.num_layers - 1, 1) for i in range(self.num_layers)]
        blocks = tuple(
            BeitBlock(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                grid=grid,
                layer_norm_eps=self.layer_norm_eps,
                relative_position_bias=self.relative_position_bias,
                layer_scale=self.layer_scale,
                gelu_approximate=self.gelu_approximate,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                drop_path_rate=rate,
                dtype=self.dtype,
                parent=None,
            )
            for rate in rates
        )
        x = _Encoder(blocks, name="encoder")(x, shared_bias, train=train)
        norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")
        x = norm(x[:, 1:].mean(axis=1)) if self.mean_pooling else norm(x)[:, 0]
        return features_head(self, x)


class _Encoder(nn.Module):
    """The blocks, named ``block_{i}``; the input and each block's output are sown as ``hidden_states``, as
    :class:`jtl.models._layers.Encoder` does."""

    blocks: tuple[BeitBlock, ...]

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None, *, train: bool = False) -> jax.Array:
        self.sow("intermediates", "hidden_states", x)
        for i, block in enumerate(self.blocks):
            x = block.clone(parent=self, name=f"block_{i}")(x, bias, train=train)
            self.sow("intermediates", "hidden_states", x)
        return x


def beit_config(name: str) -> dict:
    """Architecture fields for ``beit-{base,large}-patch16-224`` (per-block relative position tables, LayerScale
    0.1, mean pooling), e.g. ``beit-base-patch16-224``.

    Args:
      name: the registry name.

    Returns:
      The architecture fields, as ``Beit``'s keyword arguments.

    >>> beit_config("beit-large-patch16-224")["num_layers"]
    24
    """
    if name not in SIZES:
        raise ValueError(f"unknown BEiT name {name!r}; known: {sorted(SIZES)}")
    hidden, depth, heads, mlp = SIZES[name]
    return {"hidden_size": hidden, "num_layers": depth, "num_heads": heads, "mlp_dim": mlp, "patch_size": 16}


def layer_index(model: Beit) -> tuple[Callable[[str], int], int]:
    """Embeddings (with the shared relative position table) are layer 0, ``encoder/block_{i}`` layer ``i + 1``,
    the final norm and head the top."""
    return block_layer_index(model.num_layers), model.num_layers + 1


def feature_maps(model: Beit, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """Chosen blocks' patch tokens on the patch grid, the class token dropped, as ``BeitBackbone``'s feature maps
    (``reshape_hidden_states``; see :func:`jtl.models.feature_maps`)."""
    grid = patch_grid(model.image_size, model.patch_size)
    return token_feature_maps(intermediates["encoder"]["hidden_states"], grid, 1, layers)


def _configs() -> dict[str, dict[str, Any]]:
    configs = {name: beit_config(name) for name in SIZES}
    configs["beit-testing"] = {
        "patch_size": 4,
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_dim": 32,
        "image_size": 16,
    }
    return configs


CONFIGS = _configs()
