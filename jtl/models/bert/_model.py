"""BERT: the Hugging Face BERT family (bert-base-uncased, MiniLM, ...), its RoBERTa / XLM-RoBERTa variant
(position ids that start after the padding id), DistilBERT (no token types, a ReLU pre-classifier as the pooler)
and ELECTRA's discriminator (an embedding projection, a GELU head dense as the pooler), with jtl's uniform names.

Outputs: ``"pooler"`` (Hugging Face's pooled output: tanh Dense on the first token), ``"cls"`` (the first
token's final hidden state), ``"mean"`` (attention-masked mean of the tokens, as sentence-transformers
pools) or ``"tokens"`` (the whole sequence). With ``num_classes > 0`` a ``head`` classifies the pooled
vector (sequence classification).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.masking import block_layer_index
from jtl.models._layers import TokenInputs, gelu, text_output, transformer_encoder

# name: (hidden size, depth, heads, intermediate size)
SIZES = {
    "bert-tiny": (128, 2, 2, 512),
    "bert-mini": (256, 4, 4, 1024),
    "bert-small": (512, 4, 8, 2048),
    "bert-base": (768, 12, 12, 3072),
    "bert-large": (1024, 24, 16, 4096),
    "minilm-l6": (384, 6, 12, 1536),
    "minilm-l12": (384, 12, 12, 1536),
}
# The pooler's activation: BERT's tanh, DistilBERT's pre-classifier ReLU, ELECTRA's head GELU.
POOLER_ACTIVATIONS = {"tanh": jnp.tanh, "relu": nn.relu, "gelu": gelu(False)}


def sinusoidal_init(key: jax.Array, shape: tuple[int, int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """DistilBERT's fixed sinusoidal position table (``sinusoidal_pos_embds``): ``sin`` in the even columns,
    ``cos`` in the odd ones, at angle ``position / 10000 ** (2 * (column // 2) / width)``.

    Args:
      key: unused (the table is fixed).
      shape: (positions, width).
      dtype: the table's dtype.

    Returns:
      The table.

    >>> sinusoidal_init(None, (2, 4))[1].round(4).tolist()
    [0.8415, 0.5403, 0.01, 0.9999]
    """
    del key
    positions, width = shape
    angle = np.arange(positions)[:, None] / np.power(10000, 2 * (np.arange(width) // 2) / width)[None]
    table = np.where(np.arange(width) % 2 == 0, np.sin(angle), np.cos(angle))
    return jnp.asarray(table, dtype)


def padded_positions(input_ids: jax.Array, padding_idx: int) -> jax.Array:
    """RoBERTa's position ids: real tokens count from ``padding_idx + 1``, padding tokens get ``padding_idx``.

    Args:
      input_ids: (batch, length) token ids.
      padding_idx: the padding token's id (which is also the first position id).

    Returns:
      (batch, length) position ids.

    >>> padded_positions(jnp.array([[0, 5, 6, 1, 1]]), 1).tolist()
    [[2, 3, 4, 1, 1]]
    """
    real = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + padding_idx


class BertEmbed(nn.Module):
    """``embed/word``, ``embed/position``, ``embed/token_type`` tables and ``embed/norm``; positions count from
    0, or as RoBERTa counts them (:func:`padded_positions`) when ``position_padding_idx`` is set. Without token
    types (``type_vocab_size=0``, DistilBERT) there is no ``embed/token_type``; with an ``embedding_size`` the
    tables and norm have that width and ``embed/project`` maps them to ``hidden_size`` (ELECTRA, ALBERT)."""

    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    dropout_rate: float
    dtype: jnp.dtype = jnp.float32
    position_padding_idx: int | None = None
    embedding_size: int | None = None
    sinusoidal_positions: bool = False

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array, *, train: bool = False) -> jax.Array:
        init = nn.initializers.normal(stddev=0.02)
        length = input_ids.shape[1]
        first = 0 if self.position_padding_idx is None else self.position_padding_idx + 1
        if first + length > self.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds the {self.max_position_embeddings - first} positions of "
                f"max_position_embeddings={self.max_position_embeddings}"
            )
        if self.position_padding_idx is None:
            positions = jnp.arange(length)[None]
        else:
            positions = padded_positions(input_ids, self.position_padding_idx)
        width = self.embedding_size or self.hidden_size
        position_init = sinusoidal_init if self.sinusoidal_positions else init
        word = nn.Embed(self.vocab_size, width, embedding_init=init, dtype=self.dtype, name="word")
        position = nn.Embed(self.max_position_embeddings, width, embedding_init=position_init, name="position")
        x = word(input_ids)
        if self.type_vocab_size:  # added in Hugging Face's order: word, token type, position
            x = x + nn.Embed(self.type_vocab_size, width, embedding_init=init, name="token_type")(token_type_ids)
        x = x + position(positions)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x.astype(self.dtype))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        if self.embedding_size is None:
            return x
        return nn.Dense(self.hidden_size, dtype=self.dtype, name="project")(x)


class Bert(TokenInputs, nn.Module):
    """A BERT encoder over token ids; see the module docstring for ``output``.

    Hidden states are sown as ``intermediates/encoder/hidden_states`` (embeddings, then each layer).

    >>> import jax, jax.numpy as jnp
    >>> model = Bert(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
    ...              max_position_embeddings=6, num_classes=2)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> model.apply(variables, jnp.array([[1, 2, 3, 0]]), jnp.array([[1, 1, 1, 0]])).shape
    (1, 2)
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    position_padding_idx: int | None = None
    embedding_size: int | None = None
    sinusoidal_positions: bool = False
    pooler_activation: str = "tanh"
    layer_norm_eps: float = 1e-12
    gelu_approximate: bool = False
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    output: str = "pooler"
    num_classes: int = 0
    head_zero_init: bool = False
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # each block's rematerialisation in training: "none", "full" or "dots_saveable"
    scan_layers: bool = False  # the blocks as one jax.lax.scan over their stacked params (same names)

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        if self.pooler_activation not in POOLER_ACTIVATIONS:
            raise ValueError(
                f"Bert pooler_activation must be one of {sorted(POOLER_ACTIVATIONS)}, got {self.pooler_activation!r}"
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
            self.position_padding_idx,
            self.embedding_size,
            self.sinusoidal_positions,
            name="embed",
        )(input_ids, token_type_ids, train=train)
        x = transformer_encoder(self, mlp_dim=self.intermediate_size, pre_norm=False)(x, attention_mask, train=train)
        # The pooler exists in every BERT checkpoint; create it whatever the output so that loading
        # never reports it as unexpected. (RoBERTa's and ELECTRA's classifier.dense, DistilBERT's pre_classifier.)
        pooler = nn.Dense(self.hidden_size, dtype=self.dtype, name="pooler")
        pooled = POOLER_ACTIVATIONS[self.pooler_activation](pooler(x[:, 0]))
        return text_output(self, x, attention_mask, pooled, self.dropout_rate, train=train)


def bert_config(name: str) -> dict:
    """Architecture fields for the names in ``SIZES``.

    Args:
      name: a key of ``SIZES``, e.g. ``bert-base`` or ``minilm-l6``.

    Returns:
      The architecture fields, as ``Bert``'s keyword arguments.

    >>> bert_config("minilm-l6")["hidden_size"]
    384
    """
    if name not in SIZES:
        raise ValueError(f"unknown BERT name {name!r}; known: {sorted(SIZES)}")
    hidden, depth, heads, intermediate = SIZES[name]
    return {"hidden_size": hidden, "num_layers": depth, "num_heads": heads, "intermediate_size": intermediate}


def layer_index(model: Bert) -> tuple[Callable[[str], int], int]:
    """Embeddings are layer 0, ``encoder/block_{i}`` layer ``i + 1``, the pooler and head the top."""
    return block_layer_index(model.num_layers), model.num_layers + 1


DISTILBERT = {"type_vocab_size": 0, "pooler_activation": "relu"}
ELECTRA = {"pooler_activation": "gelu"}
CONFIGS: dict[str, dict[str, Any]] = {
    **{name: bert_config(name) for name in SIZES},
    # DistilBERT: no token types, a ReLU pre-classifier as the pooler.
    "distilbert-base": {**bert_config("bert-base"), "num_layers": 6, **DISTILBERT},
    # ELECTRA's discriminators: a GELU head dense as the pooler; the small one projects 128-wide embeddings.
    "electra-small": {
        "hidden_size": 256,
        "num_layers": 12,
        "num_heads": 4,
        "intermediate_size": 1024,
        **ELECTRA,
        "embedding_size": 128,
    },
    "electra-base": {**bert_config("bert-base"), **ELECTRA},
    "electra-large": {**bert_config("bert-large"), **ELECTRA},
    # The tiny configurations for end-to-end tests.
    "distilbert-testing": {
        "vocab_size": 100,
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        **DISTILBERT,
    },
    "electra-testing": {
        "vocab_size": 100,
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        "embedding_size": 8,
        **ELECTRA,
    },
    "bert-testing": {
        "vocab_size": 100,
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    },
}
