"""The Audio Spectrogram Transformer (Gong et al., 2021) as Hugging Face's ``ASTForAudioClassification`` computes
it: a pre-norm ViT over overlapping patches of a log-mel filterbank.

The input is what :class:`jtl.models.ast.ASTFeatureExtractor` (Hugging Face's ``ASTFeatureExtractor``) gives,
(N, frames, mel bins). Patches of ``patch_size`` x ``patch_size`` are cut with strides ``frequency_stride`` along
the mel bins and ``time_stride`` along the frames, tokens ordered frequency-major; a class and a distillation
token precede them. The pooled features are the mean of the two after the final norm; the classifier is a
LayerNorm (``head_norm``) and the ``head`` Dense, Hugging Face's ``ASTMLPHead``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.masking import block_layer_index
from jtl.models._layers import PatchEmbed, classifier_head, transformer_encoder
from jtl.models.ast._features import ASTFeatureExtractor


class AST(nn.Module):
    """An AST backbone over (N, frames, mel bins) filterbanks, with the MLP head when ``num_classes`` > 0.

    Hidden states are sown as ``intermediates/encoder/hidden_states`` (the embeddings, then each block's output).

    >>> import jax, jax.numpy as jnp
    >>> model = AST(hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16, patch_size=4, frequency_stride=2,
    ...             time_stride=3, max_length=10, num_mel_bins=8, num_classes=5)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> model.apply(variables, jnp.ones((2, 10, 8))).shape, model.grid  # 3 mel x 3 time patches
    ((2, 5), (3, 3))
    """

    patch_size: int = 16
    frequency_stride: int = 10
    time_stride: int = 10
    max_length: int = 1024
    num_mel_bins: int = 128
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 0
    qkv_bias: bool = True
    gelu_approximate: bool = False
    layer_norm_eps: float = 1e-12
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    head_zero_init: bool = True
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # each block's rematerialisation in training: "none", "full" or "dots_saveable"
    scan_layers: bool = False  # the blocks as one jax.lax.scan over their stacked params (same names)

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid: (along the mel bins, along the frames)."""
        return (
            (self.num_mel_bins - self.patch_size) // self.frequency_stride + 1,
            (self.max_length - self.patch_size) // self.time_stride + 1,
        )

    def default_feature_extractor(self) -> ASTFeatureExtractor:
        """The feature extractor for this model's input with AudioSet's statistics (a checkpoint's own settings:
        :func:`jtl.models.load_feature_extractor`)."""
        return ASTFeatureExtractor(num_mel_bins=self.num_mel_bins, max_length=self.max_length)

    def example_inputs(self, batch_size: int = 1) -> tuple[jax.Array, ...]:
        """Inputs of the right shape for ``init``: a (batch, max_length, num_mel_bins) filterbank."""
        return (jnp.zeros((batch_size, self.max_length, self.num_mel_bins), jnp.float32),)

    @nn.compact
    def __call__(self, inputs: jax.Array, attention_mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        # attention_mask is accepted for the audio calling convention and unused: AST attends to every patch of
        # the (padded) filterbank, as Hugging Face's feature extractor gives it no mask.
        del attention_mask
        # (N, frames, mel) -> (N, mel, frames, 1): the height of the convolution runs along the mel bins.
        spectrogram = jnp.swapaxes(inputs, 1, 2)[..., None].astype(self.dtype)
        x = PatchEmbed(
            self.patch_size,
            self.hidden_size,
            True,
            self.dropout_rate,
            self.dtype,
            distillation_token=True,
            strides=(self.frequency_stride, self.time_stride),
            name="embed",
        )(spectrogram, train=train)
        encoder = transformer_encoder(self, mlp_dim=self.mlp_dim, pre_norm=True, qkv_bias=self.qkv_bias)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(encoder(x, train=train))
        x = (x[:, 0] + x[:, 1]) / 2
        self.sow("intermediates", "features", x)  # the pooled features, which features_and_logits reads
        if not self.num_classes:
            return x
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="head_norm")(x)
        return classifier_head(self.num_classes, self.head_zero_init, self.dtype)(x)


def layer_index(model: AST) -> tuple[Callable[[str], int], int]:
    """Embeddings are layer 0, ``encoder/block_{i}`` layer ``i + 1``, the final norm and the MLP head the top."""
    return block_layer_index(model.num_layers), model.num_layers + 1


CONFIGS: dict[str, dict[str, Any]] = {
    # MIT/ast-finetuned-audioset-10-10-0.4593: ViT-B over 1024 frames x 128 mel bins, strides 10 x 10.
    "ast-base": {},
    "ast-testing": {
        "patch_size": 4,
        "frequency_stride": 2,
        "time_stride": 3,
        "max_length": 16,
        "num_mel_bins": 8,
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_dim": 32,
    },
}
