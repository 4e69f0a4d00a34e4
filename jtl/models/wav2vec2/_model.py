"""Wav2Vec2 (Baevski et al., 2020) and HuBERT (Hsu et al., 2021) as Hugging Face's
``Wav2Vec2ForSequenceClassification`` / ``HubertForSequenceClassification`` compute them: the two share the
architecture.

The input is the normalised waveform (N, samples) that :class:`jtl.models.wav2vec2.Wav2Vec2FeatureExtractor`
gives, and optionally its ``attention_mask`` (1 on real samples). A stack of 1-D convolutions (the "feature
encoder": group norm on the first layer only, ``feat_extract_norm="group"``, or layer norm on every layer,
``"layer"``) turns it into frames, a LayerNorm and Dense project them to the model width, a grouped convolution
with weight normalisation adds relative positions, and a transformer encoder follows: post-norm blocks with the
encoder's LayerNorm (``norm``) applied before them (base models), or pre-norm blocks with ``norm`` after them
(``do_stable_layer_norm``, the large models). Padded frames are zeroed before the positional convolution and
masked in attention. The pooled features are the mean of the last hidden states over the valid frames; the head
is Hugging Face's ``projector`` and ``classifier`` (``head/projector``, ``head/classifier``): projecting the mean
equals the mean of the projections, so pooling first gives its logits.

Parameter names: ``embed/conv_{i}/{conv,norm}``, ``embed/proj_norm``, ``embed/proj``,
``embed/pos_conv/{weight_g,weight_v,bias}``, ``encoder/block_{i}/...``, ``norm``, ``head/...``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.masking import block_layer_index
from jtl.models._layers import gelu, transformer_encoder
from jtl.models.wav2vec2._features import Wav2Vec2FeatureExtractor

_CONV = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2  # (channels, kernel, stride): every size's


class PositionalConv(nn.Module):
    """The grouped convolution over frames whose kernel is weight-normalised along the kernel axis (PyTorch's
    ``weight_norm(conv, dim=2)``): ``weight_v`` (kernel, in / groups, out), ``weight_g`` (kernel,), ``bias``."""

    kernel_size: int
    groups: int
    gelu_approximate: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width, k = x.shape[-1], self.kernel_size
        v = self.param(
            "weight_v", nn.initializers.normal(2 * math.sqrt(1 / (k * width))), (k, width // self.groups, width)
        )
        g = self.param("weight_g", lambda _, shape: jnp.sqrt(jnp.sum(v**2, axis=(1, 2))), (k,))
        bias = self.param("bias", nn.initializers.zeros, (width,))
        kernel = v * (g / jnp.sqrt(jnp.sum(v**2, axis=(1, 2))))[:, None, None]
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            (1,),
            [(k // 2, k // 2)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups,
        ) + bias.astype(self.dtype)
        if k % 2 == 0:  # an even kernel with k // 2 on both sides gives one frame too many; the last is dropped
            y = y[:, :-1]
        return gelu(self.gelu_approximate)(y)


class Embed(nn.Module):
    """Waveform (N, samples) -> tokens (N, frames, hidden) and the frame mask: the 1-D convolutions ``conv_{i}``
    (normalised by ``norm_{i}``), ``proj_norm`` and ``proj``, then the positional convolution ``pos_conv`` added."""

    conv_layers: tuple[tuple[int, int, int], ...]
    feat_extract_norm: str
    conv_bias: bool
    proj_norm: bool
    hidden_size: int
    pos_conv_kernel: int
    pos_conv_groups: int
    layer_norm_eps: float
    feat_gelu_approximate: bool = False
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, waveform: jax.Array, attention_mask: jax.Array | None, *, train: bool = False
    ) -> tuple[jax.Array, jax.Array | None]:
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        x = waveform[..., None].astype(self.dtype)
        act = gelu(self.feat_gelu_approximate)
        for i, (channels, kernel, stride) in enumerate(self.conv_layers):
            x = nn.Conv(
                channels, (kernel,), (stride,), "VALID", use_bias=self.conv_bias, dtype=self.dtype, name=f"conv_{i}"
            )(x)
            # Group norm with a group per channel normalises each channel over all of the (padded) input's time.
            if self.feat_extract_norm == "layer":
                x = nn.LayerNorm(1e-5, self.dtype, use_fast_variance=False, name=f"norm_{i}")(x)
            elif i == 0:
                x = nn.GroupNorm(channels, epsilon=1e-5, dtype=self.dtype, use_fast_variance=False, name="norm_0")(x)
            x = act(x)
        if self.proj_norm:
            x = nn.LayerNorm(self.layer_norm_eps, self.dtype, name="proj_norm")(x)
        x = nn.Dense(self.hidden_size, dtype=self.dtype, name="proj")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        mask = None
        if attention_mask is not None:
            lengths = frame_lengths(jnp.sum(attention_mask.astype(jnp.int32), axis=-1), self.conv_layers)
            mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
            x = jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))  # padded frames give no positions
        pos = PositionalConv(
            self.pos_conv_kernel, self.pos_conv_groups, self.feat_gelu_approximate, self.dtype, name="pos_conv"
        )
        return x + pos(x), mask


def frame_lengths(lengths: jax.Array, conv_layers: Sequence[tuple[int, int, int]]) -> jax.Array:
    """The frames the feature encoder makes of ``lengths`` samples (Hugging Face's
    ``_get_feat_extract_output_lengths``).

    Args:
      lengths: sample counts, any shape.
      conv_layers: (channels, kernel, stride) per convolution.

    Returns:
      Frame counts.

    >>> frame_lengths(jnp.array([16000, 400]), _CONV).tolist()
    [49, 1]
    """
    for _, kernel, stride in conv_layers:
        lengths = (lengths - kernel) // stride + 1
    return lengths


class ProjectedHead(nn.Module):
    """Hugging Face's sequence-classification head: ``projector`` (when ``proj_size`` > 0), then ``classifier``."""

    proj_size: int
    num_classes: int
    zero_init: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.proj_size:
            x = nn.Dense(self.proj_size, dtype=self.dtype, name="projector")(x)
        kernel_init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        return nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.dtype, name="classifier")(x)


class Wav2Vec2(nn.Module):
    """A Wav2Vec2 / HuBERT backbone over (N, samples) waveforms, with the projector and classifier head when
    ``num_classes`` > 0.

    Hidden states are sown as ``intermediates/encoder/hidden_states`` (the blocks' input, then each block's
    output, as Hugging Face's ``output_hidden_states``).

    >>> import jax, jax.numpy as jnp
    >>> model = Wav2Vec2(conv_layers=((8, 10, 5), (8, 3, 2)), hidden_size=8, num_layers=1, num_heads=2,
    ...                  mlp_dim=16, pos_conv_kernel=4, pos_conv_groups=2, proj_size=4, num_classes=3,
    ...                  num_samples=400)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> mask = jnp.array([[1] * 400, [1] * 300 + [0] * 100])
    >>> model.apply(variables, jnp.ones((2, 400)), mask).shape
    (2, 3)
    """

    conv_layers: Sequence[tuple[int, int, int]] = _CONV
    feat_extract_norm: str = "group"
    conv_bias: bool = False
    proj_norm: bool = True
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    stable_layer_norm: bool = False
    proj_size: int = 256
    num_classes: int = 0
    num_samples: int = 16000  # example_inputs' length only: the model takes any length
    gelu_approximate: bool = False
    feat_gelu_approximate: bool = False
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # each block's rematerialisation in training: "none", "full" or "dots_saveable"
    scan_layers: bool = False  # the blocks as one jax.lax.scan over their stacked params (same names)

    def default_feature_extractor(self) -> Wav2Vec2FeatureExtractor:
        """A feature extractor giving ``num_samples`` samples, with an attention mask for the layer-norm feature
        encoders (as the large checkpoints' preprocessor configs say; a checkpoint's own settings:
        :func:`jtl.models.load_feature_extractor`)."""
        return Wav2Vec2FeatureExtractor(
            return_attention_mask=self.feat_extract_norm == "layer", max_length=self.num_samples
        )

    def example_inputs(self, batch_size: int = 1) -> tuple[jax.Array, ...]:
        """Inputs of the right shape for ``init``: (batch, num_samples) waveforms."""
        return (jnp.zeros((batch_size, self.num_samples), jnp.float32),)

    @nn.compact
    def __call__(self, inputs: jax.Array, attention_mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        x, mask = Embed(
            tuple(tuple(int(v) for v in c) for c in self.conv_layers),
            self.feat_extract_norm,
            self.conv_bias,
            self.proj_norm,
            self.hidden_size,
            self.pos_conv_kernel,
            self.pos_conv_groups,
            self.layer_norm_eps,
            self.feat_gelu_approximate,
            self.dropout_rate,
            self.dtype,
            name="embed",
        )(inputs, attention_mask, train=train)
        norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")
        if not self.stable_layer_norm:
            x = norm(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        encoder = transformer_encoder(self, mlp_dim=self.mlp_dim, pre_norm=self.stable_layer_norm)
        x = encoder(x, mask, train=train)
        if self.stable_layer_norm:
            x = norm(x)
        if mask is None:
            x = x.mean(axis=1)
        else:
            weights = mask.astype(x.dtype)
            x = jnp.einsum("nt,ntd->nd", weights, x) / weights.sum(axis=1, keepdims=True)
        self.sow("intermediates", "features", x)  # the pooled features, which features_and_logits reads
        if not self.num_classes:
            return x
        return ProjectedHead(self.proj_size, self.num_classes, self.head_zero_init, self.dtype, name="head")(x)


def layer_index(model: Wav2Vec2) -> tuple[Callable[[str], int], int]:
    """The feature encoder and projection are layer 0 (with the encoder's ``norm`` where it comes before the
    blocks), ``encoder/block_{i}`` layer ``i + 1``, the final norm and the head the top."""
    embed = r"embed(/.*)?" if model.stable_layer_norm else r"(embed|norm)(/.*)?"
    return block_layer_index(model.num_layers, embed), model.num_layers + 1


def _size(hidden: int, depth: int, heads: int, stable: bool) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_layers": depth,
        "num_heads": heads,
        "mlp_dim": 4 * hidden,
        "stable_layer_norm": stable,
        "feat_extract_norm": "layer" if stable else "group",
        "conv_bias": stable,
    }


_TESTING = {
    "conv_layers": ((8, 10, 5), (8, 3, 2)),
    "hidden_size": 16,
    "num_layers": 2,
    "num_heads": 2,
    "mlp_dim": 32,
    "pos_conv_kernel": 4,
    "pos_conv_groups": 2,
    "proj_size": 8,
    "num_samples": 400,
}
CONFIGS: dict[str, dict[str, Any]] = {
    # facebook/wav2vec2-base, facebook/wav2vec2-large-lv60 (and -large-960h-lv60-self), facebook/hubert-base-ls960,
    # facebook/hubert-large-ll60k: the sizes and norm variants their config.json files give.
    "wav2vec2-base": _size(768, 12, 12, False),
    "wav2vec2-large-lv60": _size(1024, 24, 16, True),
    "hubert-base": _size(768, 12, 12, False),
    "hubert-large": _size(1024, 24, 16, True),
    "wav2vec2-testing": _TESTING,
    "wav2vec2-stable-testing": {**_TESTING, "stable_layer_norm": True, "feat_extract_norm": "layer", "conv_bias": True},
}
