"""DeBERTa-v2 / v3 (microsoft/deberta-v3-*, Hugging Face ``deberta-v2``) with jtl's uniform names.

Attention is disentangled: beside content-to-content scores, each query scores the key's relative position
(c2p) and each key the query's (p2c), through a shared table of relative-position embeddings
(``encoder/rel_embeddings``, normalised by ``encoder/rel_norm``) that v3 indexes by log-spaced buckets. v3 has no
absolute position embeddings (``position_biased_input=False``) and projects the table with the content
projections (``share_att_key``); v2's xlarge models add a convolution beside the first block (``conv_kernel_size``).

Outputs: ``"pooler"`` (Hugging Face's ContextPooler: Dense and activation on the first token, what the sequence
classifier reads), ``"cls"``, ``"mean"`` (attention-masked) or ``"tokens"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.masking import block_layer_index
from jtl.models._layers import Mlp, TokenInputs, activation, text_output

POSITION_ATTENTION = ("c2p", "p2c")

# name: (hidden size, depth, heads, intermediate size)
SIZES = {
    "deberta-v3-xsmall": (384, 12, 6, 1536),
    "deberta-v3-small": (768, 6, 12, 3072),
    "deberta-v3-base": (768, 12, 12, 3072),
    "deberta-v3-large": (1024, 24, 16, 4096),
}


def log_bucket_positions(relative: np.ndarray, buckets: int, max_position: int) -> np.ndarray:
    """DeBERTa's log-spaced buckets of relative positions: distances under ``buckets // 2`` keep their own bucket,
    longer ones share buckets that widen logarithmically up to ``max_position``. Computed in float32 as
    transformers' ``make_log_bucket_position`` computes it (bucket borders depend on float32 rounding).

    Args:
      relative: integer relative positions (query minus key).
      buckets: ``position_buckets``.
      max_position: ``max_relative_positions``.

    Returns:
      The bucketed positions (integers; the attention clamps them to the table's ``buckets`` each way).

    >>> log_bucket_positions(np.array([-9, -2, 0, 1, 3, 9]), 4, 8).tolist()
    [-4, -2, 0, 1, 3, 4]
    """
    relative = np.asarray(relative, np.int64)
    sign = np.sign(relative).astype(np.float32)
    mid = buckets // 2
    distance = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    ratio = np.log(distance.astype(np.float32) / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
    log_pos = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
    return np.where(distance <= mid, relative.astype(np.float32), log_pos * sign).astype(np.int64)


def relative_positions(length: int, buckets: int, max_position: int) -> np.ndarray:
    """The (length, length) relative positions ``query - key`` that index the relative-embedding table, bucketed
    when ``buckets`` > 0.

    Args:
      length: the sequence length.
      buckets: ``position_buckets`` (<= 0: no buckets).
      max_position: ``max_relative_positions``.

    Returns:
      An int64 array.

    >>> relative_positions(3, 0, 8).tolist()
    [[0, -1, -2], [1, 0, -1], [2, 1, 0]]
    """
    ids = np.arange(length)
    relative = ids[:, None] - ids[None, :]
    if buckets > 0 and max_position > 0:
        relative = log_bucket_positions(relative, buckets, max_position)
    return relative


class DisentangledAttention(nn.Module):
    """DeBERTa's self-attention: ``query``/``key``/``value``/``out`` Dense layers, and the content-to-position
    (c2p) and position-to-content (p2c) scores over the relative-embedding table, whose projections are the
    content ones (``share_att_key``) or their own ``pos_key`` (c2p) and ``pos_query`` (p2c)."""

    num_heads: int
    pos_att_type: tuple[str, ...]
    share_att_key: bool
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        pair_mask: jax.Array,
        rel_embeddings: jax.Array | None,
        rel_positions: np.ndarray | None,
        *,
        train: bool = False,
    ) -> jax.Array:
        batch, length, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"hidden size {width} is not divisible by num_heads={self.num_heads}")
        head_dim = width // self.num_heads
        dense = {name: nn.Dense(width, dtype=self.dtype, name=name) for name in ("query", "key", "value")}

        def heads(y: jax.Array) -> jax.Array:  # (..., length, width) -> (..., heads, length, head_dim)
            y = y.reshape(*y.shape[:-1], self.num_heads, head_dim)
            return jnp.moveaxis(y, -2, -3)

        q, k, v = (heads(dense[name](x)) for name in ("query", "key", "value"))
        # Every score is divided by sqrt(head_dim * the number of score kinds), as transformers does even without
        # relative attention.
        factor = 1 + sum(kind in self.pos_att_type for kind in POSITION_ATTENTION)
        scale = jnp.sqrt(jnp.asarray(head_dim * factor, jnp.float32)).astype(self.dtype)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k / scale)
        if rel_embeddings is not None:
            rel = nn.Dropout(self.dropout_rate)(rel_embeddings, deterministic=not train)
            span = rel.shape[0] // 2
            if "c2p" in self.pos_att_type:
                project = dense["key"] if self.share_att_key else nn.Dense(width, dtype=self.dtype, name="pos_key")
                c2p = jnp.einsum("bhqd,hrd->bhqr", q, heads(project(rel)))
                index = np.clip(rel_positions + span, 0, 2 * span - 1)
                c2p = jnp.take_along_axis(c2p, jnp.broadcast_to(index, (*c2p.shape[:2], length, length)), axis=-1)
                logits = logits + c2p / scale
            if "p2c" in self.pos_att_type:
                project = dense["query"] if self.share_att_key else nn.Dense(width, dtype=self.dtype, name="pos_query")
                p2c = jnp.einsum("bhkd,hrd->bhkr", k, heads(project(rel)))
                index = np.clip(-rel_positions + span, 0, 2 * span - 1)
                p2c = jnp.take_along_axis(p2c, jnp.broadcast_to(index, (*p2c.shape[:2], length, length)), axis=-1)
                logits = logits + jnp.swapaxes(p2c, -1, -2) / scale
        logits = jnp.where(pair_mask[:, None], logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.attention_dropout_rate)(weights, deterministic=not train)
        out = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(batch, length, width)
        return nn.Dense(width, dtype=self.dtype, name="out")(out)


class DebertaBlock(nn.Module):
    """A post-norm block: ``norm1(x + attn)``, then ``norm2(x + mlp)`` (``mlp/fc1``, GELU, ``mlp/fc2``)."""

    num_heads: int
    intermediate_size: int
    pos_att_type: tuple[str, ...]
    share_att_key: bool
    layer_norm_eps: float
    gelu_approximate: bool
    dropout_rate: float
    attention_dropout_rate: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, pair_mask, rel_embeddings, rel_positions, *, train: bool = False) -> jax.Array:
        drop = nn.Dropout(self.dropout_rate)
        attn = DisentangledAttention(
            self.num_heads,
            self.pos_att_type,
            self.share_att_key,
            self.dropout_rate,
            self.attention_dropout_rate,
            self.dtype,
            name="attn",
        )
        y = drop(attn(x, pair_mask, rel_embeddings, rel_positions, train=train), deterministic=not train)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x + y)
        # Hugging Face drops out after fc2 only.
        y = Mlp(self.intermediate_size, self.gelu_approximate, 0.0, dtype=self.dtype, name="mlp")(x, train=train)
        y = drop(y, deterministic=not train)
        return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x + y)


class DebertaConv(nn.Module):
    """DeBERTa-v2's convolution beside the first block: ``norm(block output + act(conv(embeddings)))``, with the
    padding positions zeroed (``conv``: a 1-D convolution over the sequence, ``norm``)."""

    kernel_size: int
    groups: int
    act: str
    layer_norm_eps: float
    dropout_rate: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, embeddings, block_output, mask, *, train: bool = False) -> jax.Array:
        pad = (self.kernel_size - 1) // 2
        out = nn.Conv(
            embeddings.shape[-1],
            (self.kernel_size,),
            padding=[(pad, pad)],
            feature_group_count=self.groups,
            dtype=self.dtype,
            name="conv",
        )(embeddings)
        keep = mask[..., None].astype(out.dtype)
        out = activation(self.act)(nn.Dropout(self.dropout_rate)(out * keep, deterministic=not train))
        out = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(block_output + out)
        return out * keep


class DebertaEncoder(nn.Module):
    """``num_layers`` copies of ``block`` (``block_{i}``) over the shared relative-embedding table
    ``rel_embeddings`` (its LayerNorm ``rel_norm``), and the optional ``conv`` beside the first; the input and each
    block's output are sown as ``intermediates/encoder/hidden_states``, as Hugging Face's ``output_hidden_states``."""

    num_layers: int
    block: DebertaBlock
    relative_attention: bool
    rel_span: int  # the table has 2 * rel_span rows
    position_buckets: int
    max_relative_positions: int
    rel_norm: bool
    conv_layer: DebertaConv | None = None  # beside the first block, named ``conv``

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
        self.sow("intermediates", "hidden_states", x)
        rel_embeddings = rel_positions = None
        if self.relative_attention:
            shape = (2 * self.rel_span, x.shape[-1])
            rel_embeddings = self.param("rel_embeddings", nn.initializers.normal(0.02), shape, jnp.float32)
            rel_embeddings = rel_embeddings.astype(x.dtype)
            if self.rel_norm:
                norm = nn.LayerNorm(epsilon=self.block.layer_norm_eps, dtype=self.block.dtype, name="rel_norm")
                rel_embeddings = norm(rel_embeddings)
            rel_positions = relative_positions(x.shape[1], self.position_buckets, self.max_relative_positions)
        pair_mask = mask[:, None, :].astype(bool) & mask[:, :, None].astype(bool)
        embeddings = x
        for i in range(self.num_layers):
            x = self.block.clone(parent=self, name=f"block_{i}")(
                x, pair_mask, rel_embeddings, rel_positions, train=train
            )
            if i == 0 and self.conv_layer is not None:
                x = self.conv_layer.clone(parent=self, name="conv")(embeddings, x, mask, train=train)
            self.sow("intermediates", "hidden_states", x)
        return x


class DebertaEmbed(nn.Module):
    """``embed/word`` (+ ``embed/position``, ``embed/token_type``), ``embed/proj`` where the embeddings are
    narrower than the encoder, ``embed/norm``; padding positions zeroed."""

    vocab_size: int
    hidden_size: int
    embedding_size: int
    max_position_embeddings: int
    type_vocab_size: int
    position_biased_input: bool
    layer_norm_eps: float
    dropout_rate: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, *, train: bool = False) -> jax.Array:
        length = input_ids.shape[1]

        def table(name: str, size: int) -> nn.Embed:
            init = nn.initializers.normal(stddev=0.02)
            return nn.Embed(size, self.embedding_size, embedding_init=init, dtype=self.dtype, name=name)

        x = table("word", self.vocab_size)(input_ids)
        if self.position_biased_input:
            if length > self.max_position_embeddings:
                raise ValueError(
                    f"sequence length {length} exceeds max_position_embeddings={self.max_position_embeddings}"
                )
            x = x + table("position", self.max_position_embeddings)(jnp.arange(length)[None])
        if self.type_vocab_size > 0:
            types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + table("token_type", self.type_vocab_size)(types)
        if self.embedding_size != self.hidden_size:
            x = nn.Dense(self.hidden_size, use_bias=False, dtype=self.dtype, name="proj")(x)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x.astype(self.dtype))
        x = x * attention_mask[..., None].astype(x.dtype)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class Deberta(TokenInputs, nn.Module):
    """A DeBERTa-v2/v3 encoder over token ids; see the module docstring for ``output``. The defaults are
    deberta-v3-base's.

    Hidden states are sown as ``intermediates/encoder/hidden_states`` (embeddings, then each layer).

    >>> import jax, jax.numpy as jnp
    >>> model = Deberta(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
    ...                 position_buckets=4, max_relative_positions=8, num_classes=2)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> model.apply(variables, jnp.array([[1, 2, 3, 0]]), jnp.array([[1, 1, 1, 0]])).shape
    (1, 2)
    """

    vocab_size: int = 128100
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    embedding_size: int | None = None  # the token embeddings' width, projected to hidden_size when it differs
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    position_biased_input: bool = False
    relative_attention: bool = True
    max_relative_positions: int = -1  # <= 0: max_position_embeddings
    position_buckets: int = 256  # <= 0: no buckets, the table spans max_relative_positions each way
    pos_att_type: tuple[str, ...] = ("p2c", "c2p")
    share_att_key: bool = True
    rel_norm: bool = True  # Hugging Face's norm_rel_ebd="layer_norm"
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    layer_norm_eps: float = 1e-7
    gelu_approximate: bool = False
    pooler_act: str = "gelu"
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    pooler_dropout_rate: float = 0.0
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
        unknown = set(self.pos_att_type) - set(POSITION_ATTENTION)
        if unknown:
            raise ValueError(f"pos_att_type: unknown {sorted(unknown)}; known: {POSITION_ATTENTION}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = DebertaEmbed(
            self.vocab_size,
            self.hidden_size,
            self.embedding_size or self.hidden_size,
            self.max_position_embeddings,
            self.type_vocab_size,
            self.position_biased_input,
            self.layer_norm_eps,
            self.dropout_rate,
            self.dtype,
            name="embed",
        )(input_ids, attention_mask, token_type_ids, train=train)
        x = self._encoder()(x, attention_mask, train=train)
        context = nn.Dropout(self.pooler_dropout_rate)(x[:, 0], deterministic=not train)
        pooled = activation(self.pooler_act)(nn.Dense(self.hidden_size, dtype=self.dtype, name="pooler")(context))
        return text_output(self, x, attention_mask, pooled, self.classifier_dropout_rate, train=train)

    def _encoder(self) -> DebertaEncoder:
        block = DebertaBlock(
            self.num_heads,
            self.intermediate_size,
            tuple(self.pos_att_type),
            self.share_att_key,
            self.layer_norm_eps,
            self.gelu_approximate,
            self.dropout_rate,
            self.attention_dropout_rate,
            self.dtype,
            parent=None,
        )
        conv = None
        if self.conv_kernel_size > 0:
            conv = DebertaConv(
                self.conv_kernel_size,
                self.conv_groups,
                self.conv_act,
                self.layer_norm_eps,
                self.dropout_rate,
                self.dtype,
                parent=None,
            )
        max_position = self.max_relative_positions if self.max_relative_positions > 0 else self.max_position_embeddings
        return DebertaEncoder(
            self.num_layers,
            block,
            self.relative_attention,
            self.position_buckets if self.position_buckets > 0 else max_position,
            self.position_buckets,
            max_position,
            self.rel_norm,
            conv,
            name="encoder",
        )


def deberta_config(name: str) -> dict:
    """Architecture fields for the names in ``SIZES`` (the other fields' defaults are DeBERTa-v3's).

    Args:
      name: a key of ``SIZES``, e.g. ``deberta-v3-base``.

    Returns:
      The architecture fields, as ``Deberta``'s keyword arguments.

    >>> deberta_config("deberta-v3-xsmall")["hidden_size"]
    384
    """
    if name not in SIZES:
        raise ValueError(f"unknown DeBERTa name {name!r}; known: {sorted(SIZES)}")
    hidden, depth, heads, intermediate = SIZES[name]
    return {"hidden_size": hidden, "num_layers": depth, "num_heads": heads, "intermediate_size": intermediate}


def layer_index(model: Deberta) -> tuple[Callable[[str], int], int]:
    """Embeddings and the relative-position table are layer 0, ``encoder/block_{i}`` layer ``i + 1`` (the
    convolution beside block 0 is layer 1), the pooler and head the top."""
    of_block = block_layer_index(model.num_layers, r"(?:embed|encoder/rel_embeddings|encoder/rel_norm)(?:/.*)?")

    def layer_of(name: str) -> int:
        return 1 if name.startswith("encoder/conv/") else of_block(name)

    return layer_of, model.num_layers + 1


CONFIGS: dict[str, dict[str, Any]] = {
    **{name: deberta_config(name) for name in SIZES},
    # The tiny configuration for end-to-end tests: few buckets, so that bucketing is exercised.
    "deberta-testing": {
        "vocab_size": 100,
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        "position_buckets": 4,
        "max_relative_positions": 16,
    },
}
