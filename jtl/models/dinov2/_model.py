"""DINOv2 (Oquab et al., 2023), with and without register tokens (Darcet et al., 2024), as Hugging Face's
``Dinov2Model`` / ``Dinov2WithRegistersModel`` compute it.

A pre-norm ViT whose residual branches carry LayerScale, optionally with a SwiGLU feed-forward (the giant model)
and register tokens after the class token. The pooled features are the class token beside the mean of the patch
tokens (2 x ``hidden_size``, registers left out), what the paper's linear probes and Hugging Face's
``Dinov2ForImageClassification`` read. Parameter names are ViT's (``embed/...``, ``encoder/block_{i}/attn/query``,
``.../mlp/fc1``, ``norm``, ``head``) plus ``encoder/block_{i}/scale{1,2}/scale`` and ``embed/registers``.
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
    features_head,
    patch_grid,
    token_feature_maps,
    transformer_encoder,
)

# name: (hidden size, depth, heads, MLP width, SwiGLU), as Hugging Face's facebook/dinov2-* configs give them.
SIZES = {
    "s": (384, 12, 6, 1536, False),
    "b": (768, 12, 12, 3072, False),
    "l": (1024, 24, 16, 4096, False),
    "g": (1536, 40, 24, 4096, True),
}


class Dinov2(ImageInputs, nn.Module):
    """A DINOv2 backbone over NHWC images, with a linear ``head`` when ``num_classes`` > 0.

    Hidden states are sown as ``intermediates/encoder/hidden_states`` (the embeddings, then each block's output).

    >>> import jax, jax.numpy as jnp
    >>> model = Dinov2(patch_size=4, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16, image_size=8,
    ...                num_registers=2)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    >>> model.apply(variables, jnp.ones((2, 8, 8, 3))).shape  # the class token and the mean of the patches
    (2, 16)
    """

    patch_size: int | tuple[int, int] = 14
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    image_size: int | tuple[int, int] = 518
    num_channels: int = 3
    num_classes: int = 0
    num_registers: int = 0
    layer_scale: float = 1.0
    swiglu: bool = False
    qkv_bias: bool = True
    gelu_approximate: bool = False
    layer_norm_eps: float = 1e-6
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # each block's rematerialisation in training: "none", "full" or "dots_saveable"
    scan_layers: bool = False  # the blocks as one jax.lax.scan over their stacked params (same names)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        x = PatchEmbed(
            self.patch_size,
            self.hidden_size,
            True,
            self.dropout_rate,
            self.dtype,
            self.num_registers,
            name="embed",
        )(images.astype(self.dtype), train=train)
        encoder = transformer_encoder(
            self,
            mlp_dim=self.mlp_dim,
            pre_norm=True,
            qkv_bias=self.qkv_bias,
            layer_scale=self.layer_scale,
            drop_path_rate=self.drop_path_rate,
            swiglu=self.swiglu,
        )
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(encoder(x, train=train))
        x = jnp.concatenate([x[:, 0], x[:, 1 + self.num_registers :].mean(axis=1)], axis=-1)
        return features_head(self, x)


def dinov2_config(name: str) -> dict:
    """Architecture fields for ``dinov2-{s,b,l,g}14`` (``-reg`` adds 4 register tokens), e.g. ``dinov2-b14``.

    Args:
      name: the registry name.

    Returns:
      The architecture fields, as ``Dinov2``'s keyword arguments.

    >>> dinov2_config("dinov2-g14-reg")["mlp_dim"], dinov2_config("dinov2-g14-reg")["num_registers"]
    (4096, 4)
    """
    body = name.removeprefix("dinov2-")
    size, registers = body.removesuffix("-reg").removesuffix("14"), body.endswith("-reg")
    if size not in SIZES or not body.removesuffix("-reg").endswith("14"):
        raise ValueError(f"unknown DINOv2 name {name!r}: expected dinov2-{{{','.join(SIZES)}}}14[-reg]")
    hidden, depth, heads, mlp, swiglu = SIZES[size]
    return {
        "hidden_size": hidden,
        "num_layers": depth,
        "num_heads": heads,
        "mlp_dim": mlp,
        "swiglu": swiglu,
        "num_registers": 4 if registers else 0,
    }


def layer_index(model: Dinov2) -> tuple[Callable[[str], int], int]:
    """Embeddings are layer 0, ``encoder/block_{i}`` layer ``i + 1``, the final norm and head the top."""
    return block_layer_index(model.num_layers), model.num_layers + 1


def feature_maps(model: Dinov2, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """Chosen blocks' patch tokens on the patch grid, the class token and registers dropped (see
    :func:`jtl.models.feature_maps`)."""
    grid = patch_grid(model.image_size, model.patch_size)
    return token_feature_maps(intermediates["encoder"]["hidden_states"], grid, 1 + model.num_registers, layers)


def _configs() -> dict[str, dict[str, Any]]:
    configs = {f"dinov2-{s}14{r}": dinov2_config(f"dinov2-{s}14{r}") for s in SIZES for r in ("", "-reg")}
    configs["dinov2-testing"] = {
        "patch_size": 4,
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_dim": 32,
        "image_size": 16,
        "num_registers": 2,
    }
    return configs


CONFIGS = _configs()
