"""ModernBERT (answerdotai/ModernBERT-*, Hugging Face ``modernbert``) with jtl's uniform names.

Pre-norm blocks without biases (by default) whose attention rotates queries and keys (RoPE) and alternates
between global layers (every ``global_attn_every_n_layers``-th, from the first; rope theta
``global_rope_theta``) and local ones that see ``local_attention // 2`` tokens either side (``local_rope_theta``);
a GeGLU feed-forward; a final ``norm``. The first block has no attention norm (the embeddings are normalised).
Padded batches are computed padded (masked keys), which equals the reference's unpadded computation on the real
tokens.

Outputs: ``"pooler"`` (Hugging Face's classification head before the classifier: the first token, or the
masked mean with ``pooling="mean"``, through Dense, activation and LayerNorm), ``"cls"``, ``"mean"`` or
``"tokens"`` (all after the final norm).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.masking import block_layer_index
from jtl.models._layers import TokenInputs, activation, mean_pool, text_output

LAYER_TYPES = ("full_attention", "sliding_attention")

# name: (hidden size, depth, heads, intermediate size)
SIZES = {
    "modernbert-base": (768, 22, 12, 1152),
    "modernbert-large": (1024, 28, 16, 2624),
}


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """RoPE's (length, head_dim) cosines and sines for positions ``0 .. length - 1``, in float32 as
    transformers computes them (each frequency twice: the halves of the head rotate together).

    Args:
      length: the sequence length.
      head_dim: the attention heads' width.
      theta: the rope base.

    Returns:
      ``(cos, sin)``.

    >>> cos, sin = rope_tables(3, 4, 10000.0)
    >>> cos.shape, float(cos[0, 0]), float(sin[0, 0])
    ((3, 4), 1.0, 0.0)
    """
    inv_freq = np.float32(1.0) / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    freqs = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None].astype(np.float32)
    angles = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rotate(x: jax.Array, cos: np.ndarray, sin: np.ndarray) -> jax.Array:
    """``x * cos + rotate_half(x) * sin`` in float32, for (batch, heads, length, head_dim) ``x``."""
    half = x.shape[-1] // 2
    y = x.astype(jnp.float32)
    rotated = jnp.concatenate([-y[..., half:], y[..., :half]], axis=-1)
    return (y * cos + rotated * sin).astype(x.dtype)


class ModernBertAttention(nn.Module):
    """Self-attention with ``query``/``key``/``value``/``out`` Dense layers (Hugging Face's fused ``Wqkv``, split
    on loading), rotary position embeddings and an optional sliding window."""

    num_heads: int
    use_bias: bool
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, cos, sin, *, train: bool = False) -> jax.Array:
        batch, length, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"hidden size {width} is not divisible by num_heads={self.num_heads}")
        head_dim = width // self.num_heads

        def project(name: str) -> jax.Array:
            y = nn.Dense(width, use_bias=self.use_bias, dtype=self.dtype, name=name)(x)
            return y.reshape(batch, length, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = (project(name) for name in ("query", "key", "value"))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * jnp.asarray(head_dim**-0.5, q.dtype)
        logits = jnp.where(mask[:, None], logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
        out = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(batch, length, width)
        out = nn.Dense(width, use_bias=self.use_bias, dtype=self.dtype, name="out")(out)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)


class ModernBertBlock(nn.Module):
    """``x + attn(norm1(x))`` (no ``norm1`` in the first block), then ``x + mlp(norm2(x))`` where ``mlp`` is GeGLU:
    see :class:`GeGlu`."""

    num_heads: int
    intermediate_size: int
    first: bool
    norm_eps: float
    norm_bias: bool
    attention_bias: bool
    mlp_bias: bool
    hidden_act: str
    attention_dropout_rate: float
    mlp_dropout_rate: float
    dtype: jnp.dtype = jnp.float32

    def _norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=self.norm_eps, use_bias=self.norm_bias, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x, mask, cos, sin, *, train: bool = False) -> jax.Array:
        attn = ModernBertAttention(
            self.num_heads, self.attention_bias, self.attention_dropout_rate, self.dtype, name="attn"
        )
        x = x + attn(x if self.first else self._norm("norm1")(x), mask, cos, sin, train=train)
        mlp = GeGlu(
            self.intermediate_size, self.hidden_act, self.mlp_bias, self.mlp_dropout_rate, self.dtype, name="mlp"
        )
        return x + mlp(self._norm("norm2")(x), train=train)


class GeGlu(nn.Module):
    """``fc1`` gives twice ``hidden_dim``; ``act(first half) * second half`` goes to ``fc2``."""

    hidden_dim: int
    act: str
    use_bias: bool
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        fc1 = nn.Dense(2 * self.hidden_dim, use_bias=self.use_bias, dtype=self.dtype, name="fc1")
        value, gate = jnp.split(fc1(x), 2, axis=-1)
        y = nn.Dropout(self.dropout_rate)(activation(self.act)(value) * gate, deterministic=not train)
        return nn.Dense(x.shape[-1], use_bias=self.use_bias, dtype=self.dtype, name="fc2")(y)


class ModernBert(TokenInputs, nn.Module):
    """A ModernBERT encoder over token ids; see the module docstring for ``output``. The defaults are
    ModernBERT-base's.

    Hidden states are sown as ``intermediates/encoder/hidden_states`` (the embeddings, then each block's output,
    before the final norm).

    >>> import jax, jax.numpy as jnp
    >>> model = ModernBert(vocab_size=10, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=12,
    ...                    local_attention=2, num_classes=2)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> model.apply(variables, jnp.array([[1, 2, 3, 0]]), jnp.array([[1, 1, 1, 0]])).shape
    (1, 2)
    """

    vocab_size: int = 50368
    hidden_size: int = 768
    num_layers: int = 22
    num_heads: int = 12
    intermediate_size: int = 1152
    layer_types: tuple[str, ...] | None = None  # None: global every global_attn_every_n_layers-th, from the first
    global_attn_every_n_layers: int = 3
    local_attention: int = 128  # the local window's full width; it sees local_attention // 2 either side
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    classifier_bias: bool = False
    hidden_act: str = "gelu"
    classifier_act: str = "gelu"
    embedding_dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    mlp_dropout_rate: float = 0.0
    classifier_dropout_rate: float = 0.0
    pooling: str = "cls"  # what the pooler reads: the first token ("cls") or the masked mean ("mean")
    output: str = "pooler"
    num_classes: int = 0
    head_zero_init: bool = False
    dtype: jnp.dtype = jnp.float32

    def attention_types(self) -> tuple[str, ...]:
        """Each block's ``"full_attention"`` or ``"sliding_attention"``.

        >>> ModernBert(num_layers=4, global_attn_every_n_layers=2).attention_types()
        ('full_attention', 'sliding_attention', 'full_attention', 'sliding_attention')
        """
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers or set(self.layer_types) - set(LAYER_TYPES):
                raise ValueError(f"layer_types must give one of {LAYER_TYPES} per layer, got {self.layer_types}")
            return tuple(self.layer_types)
        every = self.global_attn_every_n_layers
        return tuple(LAYER_TYPES[bool(i % every)] for i in range(self.num_layers))

    def _norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=self.norm_eps, use_bias=self.norm_bias, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, train: bool = False):
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"ModernBert pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = ModernBertEmbed(
            self.vocab_size, self.hidden_size, self.norm_eps, self.norm_bias, self.embedding_dropout_rate, self.dtype,
            name="embed",
        )(input_ids, train=train)  # fmt: skip
        x = ModernBertEncoder(self._block(), self.attention_types(), self.local_attention,
                              self.global_rope_theta, self.local_rope_theta, name="encoder")(
            x, attention_mask, train=train
        )  # fmt: skip
        x = self._norm("norm")(x)
        pooled = x[:, 0] if self.pooling == "cls" else mean_pool(x, attention_mask)
        pooled = ModernBertPooler(self.classifier_act, self.classifier_bias, self.norm_eps, self.norm_bias, self.dtype,
                                  name="pooler")(pooled)  # fmt: skip
        return text_output(self, x, attention_mask, pooled, self.classifier_dropout_rate, train=train)

    def _block(self) -> ModernBertBlock:
        return ModernBertBlock(
            self.num_heads,
            self.intermediate_size,
            False,
            self.norm_eps,
            self.norm_bias,
            self.attention_bias,
            self.mlp_bias,
            self.hidden_act,
            self.attention_dropout_rate,
            self.mlp_dropout_rate,
            self.dtype,
            parent=None,
        )


class ModernBertPooler(nn.Module):
    """Hugging Face's ModernBertPredictionHead: ``dense``, activation, ``norm``."""

    act: str
    use_bias: bool
    norm_eps: float
    norm_bias: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(x.shape[-1], use_bias=self.use_bias, dtype=self.dtype, name="dense")(x)
        x = activation(self.act)(x)
        return nn.LayerNorm(epsilon=self.norm_eps, use_bias=self.norm_bias, dtype=self.dtype, name="norm")(x)


class ModernBertEmbed(nn.Module):
    """``embed/word`` then ``embed/norm`` (no position embeddings: the attention rotates)."""

    vocab_size: int
    hidden_size: int
    norm_eps: float
    norm_bias: bool
    dropout_rate: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, train: bool = False) -> jax.Array:
        init = nn.initializers.normal(stddev=0.02)
        x = nn.Embed(self.vocab_size, self.hidden_size, embedding_init=init, dtype=self.dtype, name="word")(input_ids)
        x = nn.LayerNorm(epsilon=self.norm_eps, use_bias=self.norm_bias, dtype=self.dtype, name="norm")(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class ModernBertEncoder(nn.Module):
    """Copies of ``block`` named ``block_{i}``, global or local by ``layer_types``; the input and each block's
    output are sown as ``intermediates/encoder/hidden_states``."""

    block: ModernBertBlock
    layer_types: tuple[str, ...]
    local_attention: int
    global_rope_theta: float
    local_rope_theta: float

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
        self.sow("intermediates", "hidden_states", x)
        length, head_dim = x.shape[1], x.shape[-1] // self.block.num_heads
        keys = mask[:, None, :].astype(bool)  # padding keys are masked; padding queries see the real tokens
        distance = np.abs(np.arange(length)[:, None] - np.arange(length)[None, :])
        masks = {"full_attention": keys, "sliding_attention": keys & (distance <= self.local_attention // 2)}
        thetas = {"full_attention": self.global_rope_theta, "sliding_attention": self.local_rope_theta}
        for i, kind in enumerate(self.layer_types):
            cos, sin = rope_tables(length, head_dim, thetas[kind])
            block = self.block.clone(parent=self, name=f"block_{i}", first=i == 0)
            x = block(x, masks[kind], cos, sin, train=train)
            self.sow("intermediates", "hidden_states", x)
        return x


def modernbert_config(name: str) -> dict:
    """Architecture fields for the names in ``SIZES`` (the other fields' defaults are ModernBERT's).

    Args:
      name: a key of ``SIZES``, e.g. ``modernbert-base``.

    Returns:
      The architecture fields, as ``ModernBert``'s keyword arguments.

    >>> modernbert_config("modernbert-large")["num_layers"]
    28
    """
    if name not in SIZES:
        raise ValueError(f"unknown ModernBERT name {name!r}; known: {sorted(SIZES)}")
    hidden, depth, heads, intermediate = SIZES[name]
    return {"hidden_size": hidden, "num_layers": depth, "num_heads": heads, "intermediate_size": intermediate}


def layer_index(model: ModernBert) -> tuple[Callable[[str], int], int]:
    """Embeddings are layer 0, ``encoder/block_{i}`` layer ``i + 1``, the final norm, pooler and head the top."""
    return block_layer_index(model.num_layers), model.num_layers + 1


CONFIGS: dict[str, dict[str, Any]] = {
    **{name: modernbert_config(name) for name in SIZES},
    # The tiny configuration for end-to-end tests: a local window narrower than the test sequences.
    "modernbert-testing": {
        "vocab_size": 100,
        "hidden_size": 16,
        "num_layers": 3,
        "num_heads": 2,
        "intermediate_size": 24,
        "global_attn_every_n_layers": 2,
        "local_attention": 4,
    },
}
