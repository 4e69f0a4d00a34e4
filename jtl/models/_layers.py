"""Pieces the families share, with jtl's uniform parameter names: the transformer encoder (ViT, BERT, DINOv2),
and the ``head`` every model ends with."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.masking import named_leaves


def gelu(approximate: bool):
    """The source's GELU: Hugging Face uses the exact erf form, vit_jax/big_vision the tanh approximation.

    The exact form is written with ``erf``, as PyTorch computes it: ``jax.nn.gelu(approximate=False)`` goes
    through ``erfc``, which XLA's CPU backend evaluates 2.2x slower (``benchmarks/vs_pytorch.py``); the two
    agree to float32 rounding.
    """
    if approximate:
        return lambda x: nn.gelu(x, approximate=True)
    return lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))).astype(x.dtype))


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation a Hugging Face config's ``hidden_act`` names, computed as PyTorch computes it (the exact GELU
    through ``erf``; ``relu6`` clips).

    Args:
      name: ``gelu`` (exact), ``gelu_new`` (and the other tanh-approximate GELUs), ``tanh``, ``relu``, ``relu6``,
        ``silu`` or ``swish``.

    Returns:
      The function.

    Raises:
      ValueError: for another name.

    >>> [float(activation(name)(jnp.float32(7.0))) for name in ("relu", "relu6")], float(activation("tanh")(0.0))
    ([7.0, 6.0], 0.0)
    """
    if name in ("gelu", "gelu_python"):
        return gelu(False)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh"):
        return gelu(True)
    known = {"tanh": jnp.tanh, "relu": nn.relu, "relu6": jax.nn.relu6, "silu": nn.silu, "swish": nn.silu}
    if name not in known:
        raise ValueError(f"activation {name!r} is not supported; known: the GELUs, {sorted(known)}")
    return known[name]


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate ``query``/``key``/``value``/``out`` Dense layers.

    Separate (D, D) projections keep weight conversion a plain transpose for every source (Hugging Face
    Linear layers, big_vision's (D, heads, head_dim) kernels reshaped).
    """

    num_heads: int
    dropout_rate: float = 0.0
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        batch, length, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"hidden size {width} is not divisible by num_heads={self.num_heads}")
        head_dim = width // self.num_heads

        def project(name: str) -> jax.Array:
            y = nn.Dense(width, use_bias=self.use_bias, dtype=self.dtype, name=name)(x)
            return y.reshape(batch, length, self.num_heads, head_dim)

        # Heads-major (batch, heads, length, head_dim) operands: XLA's CPU batched matmul is 4.5x faster on
        # them than on the (batch, length, heads, head_dim) layout the projections produce.
        q, k, v = (project(name).transpose(0, 2, 1, 3) for name in ("query", "key", "value"))
        # Scaling the queries rather than the logits keeps a (batch, heads, length, length) constant out of the
        # backward pass.
        q = q / jnp.asarray(math.sqrt(head_dim), q.dtype)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
        logits = logits.astype(jnp.float32)
        if mask is not None:
            # mask: (batch, length) with 1 for real tokens, as Hugging Face's attention_mask; or (batch, queries,
            # keys) per query (CLIP's causal text mask).
            mask = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
            logits = jnp.where(mask.astype(bool), logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        return nn.Dense(width, dtype=self.dtype, name="out")(out)


class Mlp(nn.Module):
    """``fc1``, GELU, ``fc2``; with ``swiglu``, ``fc1`` gives twice ``hidden_dim`` and ``silu(a) * b`` of its two
    halves goes to ``fc2`` (DINOv2's SwiGLU feed-forward); ``activation`` replaces the GELU (CLIP's quick GELU)."""

    hidden_dim: int
    gelu_approximate: bool = False
    dropout_rate: float = 0.0
    swiglu: bool = False
    dtype: jnp.dtype = jnp.float32
    activation: Callable[[jax.Array], jax.Array] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        width = x.shape[-1]
        if self.swiglu:
            gate, value = jnp.split(nn.Dense(2 * self.hidden_dim, dtype=self.dtype, name="fc1")(x), 2, axis=-1)
            y = nn.silu(gate) * value
        else:
            act = self.activation or gelu(self.gelu_approximate)
            y = act(nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x))
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        return nn.Dense(width, dtype=self.dtype, name="fc2")(y)


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch (CaiT, DINOv2): the param ``scale``."""

    init_value: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.constant(self.init_value), (x.shape[-1],), jnp.float32)
        return x * scale.astype(self.dtype)


class DropPath(nn.Module):
    """Stochastic depth: in training, a whole residual branch is dropped per example with probability ``rate``
    (the kept ones scaled by ``1 / (1 - rate)``); the identity in evaluation. Draws from the ``dropout`` stream."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        kept = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(kept, x / keep, jnp.zeros_like(x))


class EncoderBlock(nn.Module):
    """A transformer block: pre-norm (ViT) or post-norm (BERT) residual attention and MLP; pre-norm blocks may
    scale each branch (``layer_scale``: ``scale1``/``scale2``) and drop it per example (``drop_path_rate``)."""

    num_heads: int
    mlp_dim: int
    pre_norm: bool
    layer_norm_eps: float
    gelu_approximate: bool = False
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    qkv_bias: bool = True
    layer_scale: float | None = None
    drop_path_rate: float = 0.0
    swiglu: bool = False
    dtype: jnp.dtype = jnp.float32
    activation: Callable[[jax.Array], jax.Array] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        norm1 = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")
        norm2 = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")
        attn = SelfAttention(
            self.num_heads, self.attention_dropout_rate, use_bias=self.qkv_bias, dtype=self.dtype, name="attn"
        )
        mlp = Mlp(
            self.mlp_dim,
            self.gelu_approximate,
            self.dropout_rate,
            self.swiglu,
            dtype=self.dtype,
            activation=self.activation,
            name="mlp",
        )
        drop = nn.Dropout(self.dropout_rate)
        if self.pre_norm:
            x = self._residual(x, drop(attn(norm1(x), mask, train=train), deterministic=not train), 1, train)
            return self._residual(x, drop(mlp(norm2(x), train=train), deterministic=not train), 2, train)
        x = norm1(x + drop(attn(x, mask, train=train), deterministic=not train))
        return norm2(x + drop(mlp(x, train=train), deterministic=not train))

    def _residual(self, x: jax.Array, branch: jax.Array, index: int, train: bool) -> jax.Array:
        """``x`` plus a pre-norm branch, LayerScaled (``scale{index}``) and drop-pathed where the block says."""
        if self.layer_scale is not None:
            branch = LayerScale(self.layer_scale, self.dtype, name=f"scale{index}")(branch)
        return x + DropPath(self.drop_path_rate)(branch, train=train)


class PatchEmbed(nn.Module):
    """Patches -> tokens: ``patch`` (conv), ``cls`` (class token), ``dist`` (DeiT's distillation token, after the
    class token), ``pos_embedding`` (for those tokens and the patches), then ``registers`` (DINOv2's register
    tokens, after the class token, without position embeddings). ``strides`` (default: the patch size) below the
    patch size cut overlapping patches (AST).
    """

    patch_size: int | tuple[int, int]
    hidden_size: int
    class_token: bool
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    num_registers: int = 0
    distillation_token: bool = False
    strides: int | tuple[int, int] | None = None

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        p = pair(self.patch_size)
        strides = p if self.strides is None else pair(self.strides)
        x = nn.Conv(self.hidden_size, p, strides=strides, padding="VALID", dtype=self.dtype, name="patch")(images)
        batch, h, w, width = x.shape
        x = x.reshape(batch, h * w, width)
        tokens = ("cls",) * self.class_token + ("dist",) * self.distillation_token
        for name in reversed(tokens):
            token = self.param(name, nn.initializers.zeros, (1, 1, width), jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(token.astype(x.dtype), (batch, 1, width)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, x.shape[1], width), jnp.float32)
        x = x + pos.astype(x.dtype)
        if self.num_registers:
            registers = self.param("registers", nn.initializers.zeros, (1, self.num_registers, width), jnp.float32)
            registers = jnp.broadcast_to(registers.astype(x.dtype), (batch, self.num_registers, width))
            x = jnp.concatenate([x[:, :1], registers, x[:, 1:]], axis=1)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


#: The ``remat`` values of the transformer families, each block's rematerialisation in training: ``"none"`` keeps
#: every activation for the backward pass; ``"full"`` keeps only each block's input and recomputes the rest;
#: ``"dots_saveable"`` keeps the outputs of every matrix product (``jax.checkpoint_policies.dots_saveable``: the
#: Dense projections and attention's two batched products) and recomputes the norms, softmax, GELU and dropout.
REMAT = ("none", "full", "dots_saveable")
#: Model fields that change how a model runs, not what it computes: saved model descriptions leave them out, so a
#: checkpoint written with them restores without them and the other way round.
MEMORY_FIELDS = ("remat", "scan_layers")


def remat_policy(remat: str) -> Callable[..., bool] | None:
    """The ``jax.checkpoint`` policy of a ``remat`` value (see ``REMAT``).

    Args:
      remat: ``"full"`` or ``"dots_saveable"``.

    Returns:
      The policy (``None`` for ``"full"``: nothing saved but the block's inputs).

    Raises:
      ValueError: another value, naming the known ones.

    >>> remat_policy("full") is None, remat_policy("dots_saveable") is jax.checkpoint_policies.dots_saveable
    (True, True)
    """
    policies = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}
    if remat not in policies:
        raise ValueError(f'remat must be one of {REMAT} ("none" rematerialises nothing), got {remat!r}')
    return policies[remat]


class Encoder(nn.Module):
    """``num_layers`` copies of ``block`` named ``block_{i}``; the input and each block's output are sown as
    ``intermediates/encoder/hidden_states``, like Hugging Face's ``output_hidden_states``.

    ``remat`` (see ``REMAT``) recomputes each block's activations in the backward pass instead of keeping them.
    ``scan`` runs the blocks as one ``jax.lax.scan`` over their stacked parameters, so a deep encoder traces one
    block instead of ``num_layers``. The parameters keep their names either way (``block_{i}``, initialised as
    without scan); under scan each block's dropout key is split from the encoder's ``dropout`` stream, so dropout
    masks differ from the unscanned model's (same distribution; without dropout both compute the same).

    What they cost (``benchmarks/memory.py``): the stack is a copy of the blocks' parameters made at every call,
    and in training their gradients come out stacked too, two encoder-sized temporaries that pay off where the
    activations dominate, with ``remat``. On XLA's CPU backend ``remat`` saves memory only under ``scan``: unrolled,
    the recomputation runs (``"full"``: 1.23x the FLOPs) but the CPU compiler's schedule keeps as many activations
    alive as without it; the scanned backward loop can only recompute each block's inside its own iteration.
    """

    num_layers: int
    block: EncoderBlock
    remat: str = "none"
    scan: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        policy = None if self.remat == "none" else remat_policy(self.remat)
        self.sow("intermediates", "hidden_states", x)
        # Initialising runs the blocks one by one, so that scanned and unscanned models start from the same params.
        if self.scan and self.num_layers and not self.is_initializing():
            return self._scanned(x, mask, policy, train)

        def run(module: nn.Module, x: jax.Array, mask: jax.Array | None) -> jax.Array:
            return module(x, mask, train=train)

        if self.remat != "none":
            # The lifted transform keeps the block's scope, hence its parameter names and dropout keys.
            run = nn.remat(run, policy=policy)
        for i in range(self.num_layers):
            x = run(self.block.clone(parent=self, name=f"block_{i}"), x, mask)
            self.sow("intermediates", "hidden_states", x)
        return x

    def _scanned(self, x: jax.Array, mask: jax.Array | None, policy: Any, train: bool) -> jax.Array:
        blocks = [self.get_variable("params", f"block_{i}") for i in range(self.num_layers)]
        _check_stackable(blocks)
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)
        keys = None
        if train and self.has_rng("dropout"):
            keys = jax.random.split(self.make_rng("dropout"), self.num_layers)
        # The blocks run under this encoder's path (as block_0: one traced body serves them all), so adapters that
        # pick layers by path, such as (IA)^3's feed-forward patterns, find them.
        at = _At((*self.scope.path, "block_0"), self.block)
        keep = self.is_mutable_collection("intermediates")

        def step(h: jax.Array, layer: tuple) -> tuple[jax.Array, jax.Array | None]:
            params, key = layer
            rngs = {} if key is None else {"dropout": key}
            h = at.apply({"params": _nested(at.names, params)}, h, mask, train=train, rngs=rngs)
            # Each block's output leaves the loop only when someone keeps the hidden states.
            return h, (h if keep else None)

        if self.remat != "none":
            step = jax.checkpoint(step, policy=policy, prevent_cse=False)
        x, outputs = jax.lax.scan(step, x, (stacked, keys))
        for i in range(self.num_layers if keep else 0):
            self.sow("intermediates", "hidden_states", outputs[i])
        return x


def _check_stackable(blocks: list[dict]) -> None:
    """Raise unless every block holds the same parameter names and shapes, as a scan over their stack needs."""
    first = {name: jnp.shape(leaf) for name, leaf in named_leaves(blocks[0])}
    for i, block in enumerate(blocks[1:], 1):
        this = {name: jnp.shape(leaf) for name, leaf in named_leaves(block)}
        if this != first:
            differ = sorted(name for name in first.keys() | this.keys() if first.get(name) != this.get(name))
            raise ValueError(
                f"scan_layers=True stacks the encoder blocks, but block_{i} and block_0 differ in {differ[:4]}: "
                "adapters on some blocks only (e.g. LoRA targets naming a few blocks) need scan_layers=False"
            )


class _At(nn.Module):
    """Runs ``block`` as the module at the scope path ``names`` (as in the whole model), for the scanned encoder."""

    names: tuple[str, ...]
    block: nn.Module

    @nn.compact
    def __call__(self, *args: Any, **kwargs: Any) -> jax.Array:
        if len(self.names) == 1:
            return self.block.clone(parent=self, name=self.names[0])(*args, **kwargs)
        return _At(self.names[1:], self.block, name=self.names[0])(*args, **kwargs)


def _nested(names: tuple[str, ...], params: dict) -> dict:
    """``params`` under the scope path ``names``, as ``_At(names, ...).apply`` takes them."""
    for name in reversed(names):
        params = {name: params}
    return params


def transformer_encoder(
    config: nn.Module,
    *,
    mlp_dim: int,
    pre_norm: bool,
    qkv_bias: bool = True,
    layer_scale: float | None = None,
    drop_path_rate: float = 0.0,
    swiglu: bool = False,
    activation: Callable[[jax.Array], jax.Array] | None = None,
) -> Encoder:
    """The ``encoder`` of a transformer family's module, built from the fields they share.

    Args:
      config: the module whose fields (heads, layers, norms, dropout, dtype, and the memory controls ``remat``
        and ``scan_layers``) it takes.
      mlp_dim: the blocks' MLP width.
      pre_norm: LayerNorm before attention/MLP (ViT) or after the residual (BERT).
      qkv_bias: biases on the query, key and value projections.
      layer_scale: the initial LayerScale of each pre-norm branch (``None``: no LayerScale).
      drop_path_rate: stochastic depth of each pre-norm branch, in training.
      swiglu: a SwiGLU feed-forward instead of GELU.
      activation: the MLP's activation instead of the GELU ``config.gelu_approximate`` picks (``None``: that GELU).

    Returns:
      The ``Encoder`` named ``encoder``.

    >>> from jtl.models import ViT
    >>> encoder = transformer_encoder(ViT(num_layers=3, num_heads=2), mlp_dim=8, pre_norm=True)
    >>> encoder.name, encoder.num_layers
    ('encoder', 3)
    """
    block = EncoderBlock(
        num_heads=config.num_heads,
        mlp_dim=mlp_dim,
        pre_norm=pre_norm,
        layer_norm_eps=config.layer_norm_eps,
        gelu_approximate=config.gelu_approximate,
        dropout_rate=config.dropout_rate,
        attention_dropout_rate=config.attention_dropout_rate,
        qkv_bias=qkv_bias,
        layer_scale=layer_scale,
        drop_path_rate=drop_path_rate,
        swiglu=swiglu,
        dtype=config.dtype,
        activation=activation,
        parent=None,
    )
    return Encoder(config.num_layers, block, config.remat, config.scan_layers, name="encoder")


def classifier_head(num_classes: int, zero_init: bool, dtype: jnp.dtype) -> nn.Dense:
    """The ``head`` Dense layer every jtl model ends with; zero-initialised by default, as vit_jax does for
    fine-tuning.

    Args:
      num_classes: its outputs.
      zero_init: zero kernel (else LeCun normal).
      dtype: the compute dtype.

    Returns:
      The (unbound) ``nn.Dense`` named ``head``.

    >>> head = classifier_head(3, True, jnp.float32)
    >>> head.name, head.features
    ('head', 3)
    """
    kernel_init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
    return nn.Dense(num_classes, kernel_init=kernel_init, dtype=dtype, name="head")


def features_head(module: nn.Module, features: jax.Array, dropout_rate: float = 0.0, *, train: bool = False):
    """The tail every jtl model ends with: sow the pooled ``features`` (``features_and_logits`` reads them), then,
    when ``module.num_classes``, dropout and the ``head`` (``classifier_head``) over them.

    Call it from ``module``'s compact ``__call__``: the dropout and the head are created in ``module``.

    Args:
      module: the calling model; it has ``num_classes``, ``head_zero_init`` and ``dtype`` fields.
      features: the pooled (batch, width) features.
      dropout_rate: the classifier dropout before the head (none by default).
      train: whether dropout is active.

    Returns:
      The logits, or ``features`` when ``module.num_classes`` is 0.

    >>> class Tiny(nn.Module):
    ...     num_classes: int = 3
    ...     head_zero_init: bool = True
    ...     dtype: jnp.dtype = jnp.float32
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return features_head(self, x)
    >>> variables = Tiny().init(jax.random.PRNGKey(0), jnp.ones((2, 4)))
    >>> list(variables["params"]), Tiny().apply(variables, jnp.ones((2, 4))).shape
    (['head'], (2, 3))
    """
    module.sow("intermediates", "features", features)
    if not module.num_classes:
        return features
    if dropout_rate:
        features = nn.Dropout(dropout_rate)(features, deterministic=not train)
    return classifier_head(module.num_classes, module.head_zero_init, module.dtype)(features)


class ImageInputs:
    """Mixin for image models with ``image_size`` and ``num_channels`` fields: ``example_inputs`` gives zero images
    of that size, each side capped at the class's ``example_max_size`` (set it where the parameters do not depend on
    the resolution, as in the CNNs, to keep ``init`` cheap).
    """

    example_max_size: int | None = None

    def example_inputs(self, batch_size: int = 1) -> tuple[jax.Array, ...]:
        """Inputs of the right shape for ``init``: (batch, height, width, channels) zero images.

        Args:
          batch_size: the batch.

        Returns:
          A 1-tuple with the images.

        >>> class Tiny(ImageInputs, nn.Module):
        ...     image_size: int = 224
        ...     num_channels: int = 3
        ...     example_max_size = 64
        >>> Tiny().example_inputs(2)[0].shape
        (2, 64, 64, 3)
        """
        height, width = pair(self.image_size)
        if self.example_max_size is not None:  # parameters do not depend on the resolution
            height, width = min(height, self.example_max_size), min(width, self.example_max_size)
        return (jnp.zeros((batch_size, height, width, self.num_channels), jnp.float32),)


class TokenInputs:
    """Mixin for text models: ``example_inputs`` gives token ids and an attention mask."""

    def example_inputs(self, batch_size: int = 1, length: int = 4) -> tuple[jax.Array, ...]:
        """Inputs of the right shape for ``init``: token ids and an attention mask.

        Args:
          batch_size: the batch.
          length: the tokens per sequence.

        Returns:
          (batch, length) zero token ids and a (batch, length) all-ones mask.

        >>> ids, mask = TokenInputs().example_inputs(2)
        >>> ids.shape, int(mask.sum())
        ((2, 4), 8)
        """
        return jnp.zeros((batch_size, length), jnp.int32), jnp.ones((batch_size, length), jnp.int32)


TEXT_OUTPUTS = ("pooler", "cls", "mean", "tokens")


def mean_pool(tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of the token vectors where ``attention_mask`` is 1.

    Args:
      tokens: (batch, length, width) hidden states.
      attention_mask: (batch, length), 1 for real tokens and 0 for padding.

    Returns:
      (batch, width) means.

    >>> mean_pool(jnp.array([[[1.0], [3.0], [100.0]]]), jnp.array([[1, 1, 0]])).tolist()
    [[2.0]]
    """
    weights = attention_mask.astype(tokens.dtype)[..., None]
    return (tokens * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9)


def check_text_output(module: nn.Module) -> None:
    """Raise unless ``module.output`` is one of ``TEXT_OUTPUTS``.

    Args:
      module: a text encoder with an ``output`` field.

    Raises:
      ValueError: naming the module's class and the known outputs.

    >>> from types import SimpleNamespace
    >>> check_text_output(SimpleNamespace(output="mean"))
    """
    if module.output not in TEXT_OUTPUTS:
        raise ValueError(f"{type(module).__name__} output must be one of {TEXT_OUTPUTS}, got {module.output!r}")


def text_output(
    module: nn.Module, tokens: jax.Array, attention_mask: jax.Array, pooled: jax.Array, dropout_rate: float, *, train
) -> jax.Array:
    """The text encoders' tail: the ``module.output`` they return (``"pooler"``: ``pooled``; ``"cls"``: the first
    token; ``"mean"``: the masked mean; ``"tokens"``: the whole sequence), sown and classified by ``features_head``.

    Args:
      module: the calling encoder (``output``, ``num_classes``, ``head_zero_init``, ``dtype`` fields).
      tokens: the final (batch, length, width) hidden states.
      attention_mask: (batch, length), 1 for real tokens.
      pooled: the pooler's (batch, width) output.
      dropout_rate: the classifier dropout before the head.
      train: whether dropout is active.

    Returns:
      The logits, or the chosen features when ``module.num_classes`` is 0.

    >>> class Tiny(nn.Module):
    ...     output: str = "mean"
    ...     num_classes: int = 0
    ...     head_zero_init: bool = True
    ...     dtype: jnp.dtype = jnp.float32
    ...     @nn.compact
    ...     def __call__(self, x, mask):
    ...         return text_output(self, x, mask, x[:, 0], 0.1, train=False)
    >>> Tiny().apply({}, jnp.array([[[1.0], [3.0], [100.0]]]), jnp.array([[1, 1, 0]])).tolist()
    [[2.0]]
    """
    check_text_output(module)
    features = {
        "pooler": pooled,
        "cls": tokens[:, 0],
        "mean": mean_pool(tokens, attention_mask),
        "tokens": tokens,
    }[module.output]
    return features_head(module, features, dropout_rate, train=train)


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """An image or patch size as (height, width): an int is square.

    Args:
      size: an int or a (height, width) pair (a list from a JSON config too).

    Returns:
      The pair.

    >>> pair(16), pair([224, 160])
    ((16, 16), (224, 160))
    """
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def token_feature_maps(
    hidden_states: tuple, grid: tuple[int, int], prefix: int, layers: Sequence[int] | None
) -> dict[str, jax.Array]:
    """Chosen encoder blocks' patch tokens on their grid: ``{"block_{i}": (N, rows, columns, D)}``.

    Args:
      hidden_states: what ``Encoder`` sows (the embeddings, then each block's output).
      grid: the patch grid (rows, columns).
      prefix: the tokens before the patches (class token, registers) to drop.
      layers: the blocks, 0-based; default the last block of each quarter of the encoder.

    Returns:
      The maps, by block.

    >>> states = tuple(jnp.zeros((1, 1 + 6, 4)) for _ in range(5))
    >>> {name: x.shape for name, x in token_feature_maps(states, (2, 3), 1, None).items()}
    {'block_0': (1, 2, 3, 4), 'block_1': (1, 2, 3, 4), 'block_2': (1, 2, 3, 4), 'block_3': (1, 2, 3, 4)}
    """
    depth = len(hidden_states) - 1
    layers = sorted({depth * (k + 1) // 4 - 1 for k in range(4)} - {-1}) if layers is None else layers
    maps = {}
    for i in layers:
        tokens = hidden_states[i + 1][:, prefix:]
        maps[f"block_{i}"] = tokens.reshape(tokens.shape[0], *grid, tokens.shape[-1])
    return maps


def patch_grid(image_size: int | tuple[int, int], patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """The (rows, columns) of patches an image is cut into.

    Args:
      image_size: the image's size (an int is square).
      patch_size: the patch's size.

    Returns:
      The grid.

    >>> patch_grid((224, 160), 16)
    (14, 10)
    """
    (height, width), (ph, pw) = pair(image_size), pair(patch_size)
    return height // ph, width // pw
