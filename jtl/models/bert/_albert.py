"""ALBERT: factorised embeddings (``embedding_size`` wide, projected to ``hidden_size`` by ``embed/project``) and
transformer layers shared across depth, with jtl's uniform names.

Hugging Face's ALBERT holds ``num_hidden_groups`` groups of ``inner_group_num`` layers and runs
``num_hidden_layers`` steps, step ``i`` applying group ``int(i / (num_hidden_layers / num_hidden_groups))`` (all
its layers in order). jtl names each distinct layer once, ``encoder/block_{g * inner_group_num + j}`` (group ``g``,
layer ``j``): the released checkpoints (one group of one layer) have a single ``encoder/block_0`` that every step
applies. :func:`layer_index` counts these distinct blocks, not the steps, so "train the last N blocks" and
layer-wise decay act on parameter sets: for the released checkpoints ``block_0`` is layer 1, below the pooler and
head, and training the top two layers trains the whole encoder.

Outputs as BERT's (``"pooler"``: tanh Dense on the first token, ``"cls"``, ``"mean"``, ``"tokens"``); hidden
states are sown after every layer application, as Hugging Face's ``output_hidden_states`` records them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.masking import block_layer_index
from jtl.models._layers import EncoderBlock, TokenInputs, text_output
from jtl.models.bert._model import BertEmbed

# name: (hidden size, steps, heads, intermediate size); every size has 128-wide embeddings.
SIZES = {
    "albert-base": (768, 12, 12, 3072),
    "albert-large": (1024, 24, 16, 4096),
    "albert-xlarge": (2048, 24, 16, 8192),
    "albert-xxlarge": (4096, 12, 64, 16384),
}


class SharedEncoder(nn.Module):
    """The distinct blocks (``block_{k}``), applied ``num_layers`` times as ALBERT's groups are; the input and
    every block application's output are sown as ``intermediates/encoder/hidden_states``."""

    num_layers: int
    num_groups: int
    inner_group_num: int
    block: EncoderBlock

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        blocks = [
            self.block.clone(parent=self, name=f"block_{k}") for k in range(self.num_groups * self.inner_group_num)
        ]
        self.sow("intermediates", "hidden_states", x)
        for i in range(self.num_layers):
            group = int(i / (self.num_layers / self.num_groups))  # Hugging Face's float division, kept exact
            for j in range(self.inner_group_num):
                x = blocks[group * self.inner_group_num + j](x, mask, train=train)
                self.sow("intermediates", "hidden_states", x)
        return x


class Albert(TokenInputs, nn.Module):
    """An ALBERT encoder over token ids; see the module docstring for the shared blocks and ``output``.

    >>> import jax, jax.numpy as jnp
    >>> model = Albert(vocab_size=10, embedding_size=4, hidden_size=8, num_layers=3, num_heads=2,
    ...                intermediate_size=16, max_position_embeddings=6, num_classes=2)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> sorted(variables["params"]["encoder"])
    ['block_0']
    >>> model.apply(variables, jnp.array([[1, 2, 3, 0]]), jnp.array([[1, 1, 1, 0]])).shape
    (1, 2)
    """

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 768
    num_layers: int = 12
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    gelu_approximate: bool = True
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    classifier_dropout_rate: float = 0.1
    output: str = "pooler"
    num_classes: int = 0
    head_zero_init: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        if not 1 <= self.num_hidden_groups <= self.num_layers:
            raise ValueError(
                f"Albert num_hidden_groups={self.num_hidden_groups} must be between 1 and num_layers={self.num_layers}"
            )
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbed(
            self.vocab_size,
            self.hidden_size,
            self.max_position_embeddings,
            self.type_vocab_size,
            self.layer_norm_eps,
            self.dropout_rate,
            self.dtype,
            embedding_size=self.embedding_size,
            name="embed",
        )(input_ids, token_type_ids, train=train)
        block = EncoderBlock(
            num_heads=self.num_heads,
            mlp_dim=self.intermediate_size,
            pre_norm=False,
            layer_norm_eps=self.layer_norm_eps,
            gelu_approximate=self.gelu_approximate,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            parent=None,
        )
        encoder = SharedEncoder(self.num_layers, self.num_hidden_groups, self.inner_group_num, block, name="encoder")
        x = encoder(x, attention_mask, train=train)
        # Created whatever the output, so that loading never reports the checkpoint's pooler as unexpected.
        pooled = jnp.tanh(nn.Dense(self.hidden_size, dtype=self.dtype, name="pooler")(x[:, 0]))
        return text_output(self, x, attention_mask, pooled, self.classifier_dropout_rate, train=train)


def albert_config(name: str) -> dict:
    """Architecture fields for the names in ``SIZES`` (and their ``-v2`` names, with v2's GELU and no dropout).

    Args:
      name: a key of ``SIZES`` (the v1 checkpoints' fields), or one with ``-v2`` appended.

    Returns:
      The architecture fields, as ``Albert``'s keyword arguments.

    >>> albert_config("albert-xxlarge-v2")["num_heads"], albert_config("albert-base")["gelu_approximate"]
    (64, False)
    """
    v2 = name.endswith("-v2")
    base = name.removesuffix("-v2")
    if base not in SIZES:
        raise ValueError(f"unknown ALBERT name {name!r}; known: {sorted(SIZES)} (and -v2)")
    hidden, depth, heads, intermediate = SIZES[base]
    dropout = 0.0 if v2 else 0.1
    return {
        "hidden_size": hidden,
        "num_layers": depth,
        "num_heads": heads,
        "intermediate_size": intermediate,
        # v1's config.json asks for the exact GELU and dropout 0.1; v2's for gelu_new and no dropout.
        "gelu_approximate": v2,
        "dropout_rate": dropout,
        "attention_dropout_rate": dropout,
    }


def layer_index(model: Albert) -> tuple[Callable[[str], int], int]:
    """Embeddings (with ``embed/project``) are layer 0, the distinct ``encoder/block_{k}`` layer ``k + 1`` (a
    shared block counts once, however often it is applied), the pooler and head the top."""
    blocks = model.num_hidden_groups * model.inner_group_num
    return block_layer_index(blocks), blocks + 1


CONFIGS: dict[str, dict[str, Any]] = {
    **{name + suffix: albert_config(name + suffix) for name in SIZES for suffix in ("", "-v2")},
    # The tiny configuration for end-to-end tests: one block applied twice, as the released checkpoints share.
    "albert-testing": {
        "vocab_size": 100,
        "embedding_size": 8,
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    },
}
