"""DETR (Carion et al. 2020) as a head over a backbone's last feature map: Hugging Face's ``DetrForObjectDetection``
(``models/detr/modeling_detr.py``, transformers 5.24) less its convolutional backbone, which is a jtl model.

Names: ``input_projection``, ``query_position_embeddings``, ``encoder/layer_{i}``, ``decoder/layer_{i}`` (each with
``self_attn/{q,k,v,out}_proj``, ``self_attn_norm``, in the decoder ``cross_attn`` and ``cross_attn_norm``, then
``fc1``, ``fc2``, ``final_norm``), ``decoder/norm``, ``class_head``, ``box_head/layer_{0,1,2}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.detection._boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from jtl.detection._set_loss import detr_loss

_ACTIVATIONS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False), "silu": nn.silu}


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """PyTorch's ``F.interpolate(mode="nearest")`` source index along one axis: ``floor(i * (in / out))`` in
    float32, clamped."""
    if n_in == n_out:
        return np.arange(n_out)
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def _feature_mask(pixel_mask: jax.Array | None, batch: int, height: int, width: int) -> jax.Array:
    if pixel_mask is None:
        return jnp.ones((batch, height, width), bool)
    pixel_mask = pixel_mask.astype(bool)
    if pixel_mask.ndim != 3 or pixel_mask.shape[0] != batch:
        raise ValueError(f"pixel_mask: expected (batch={batch}, H, W), got {pixel_mask.shape}")
    rows = _nearest_indices(pixel_mask.shape[1], height)
    columns = _nearest_indices(pixel_mask.shape[2], width)
    return pixel_mask[:, rows][:, :, columns]


def sine_position_embedding(mask: jax.Array, num_features: int, temperature: float = 10000.0) -> jax.Array:
    """DETR's normalised sine position embedding of the real (unpadded) part of each feature map.

    Args:
      mask: (B, h, w) bool, True on real positions.
      num_features: features per axis (``d_model // 2``).
      temperature: the wavelength base.

    Returns:
      (B, h, w, 2 * num_features): the y features then the x features, each interleaving sin and cos of the
      cumulative real position scaled to (0, 2 pi].

    >>> sine_position_embedding(jnp.ones((1, 2, 3), bool), 4).shape
    (1, 2, 3, 8)
    """
    mask = mask.astype(jnp.float32)
    y = jnp.cumsum(mask, axis=1)
    x = jnp.cumsum(mask, axis=2)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim = jnp.arange(num_features, dtype=jnp.float32)
    dim = temperature ** (2 * jnp.floor(dim / 2) / num_features)

    def embed(position: jax.Array) -> jax.Array:
        angles = position[..., None] / dim
        return jnp.stack([jnp.sin(angles[..., 0::2]), jnp.cos(angles[..., 1::2])], axis=-1).reshape(angles.shape)

    return jnp.concatenate([embed(y), embed(x)], axis=-1)


def _dense(features: int, name: str, dtype: Any) -> nn.Dense:
    # Xavier-uniform, as DETR's transformer initialises its projections.
    return nn.Dense(features, kernel_init=nn.initializers.xavier_uniform(), dtype=dtype, name=name)


class _Attention(nn.Module):
    """Multi-head attention; DETR adds position embeddings to the queries' and keys' inputs, not to the values."""

    d_model: int
    num_heads: int
    dropout: float
    dtype: Any

    @nn.compact
    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array, key_mask: jax.Array, train: bool):
        head_dim = self.d_model // self.num_heads

        def heads(x: jax.Array, name: str) -> jax.Array:
            x = _dense(self.d_model, name, self.dtype)(x)
            return x.reshape(*x.shape[:-1], self.num_heads, head_dim)

        q, k, v = heads(query, "q_proj"), heads(key, "k_proj"), heads(value, "v_proj")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*query.shape[:-1], self.d_model)
        return _dense(self.d_model, "out_proj", self.dtype)(out)


class _Layer(nn.Module):
    """A post-norm transformer layer: self-attention, cross-attention (decoder only), then the MLP."""

    d_model: int
    num_heads: int
    ffn_dim: int
    dropout: float
    attention_dropout: float
    activation_dropout: float
    activation: str
    layer_norm_eps: float
    cross: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, pos, memory, memory_pos, memory_mask, train: bool) -> jax.Array:
        drop = nn.Dropout(self.dropout, deterministic=not train)

        def norm(name: str) -> nn.LayerNorm:
            return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)

        def attention(name: str) -> _Attention:
            return _Attention(self.d_model, self.num_heads, self.attention_dropout, self.dtype, name=name)

        self_mask = memory_mask if not self.cross else jnp.ones(x.shape[:2], bool)
        y = attention("self_attn")(x + pos, x + pos, x, self_mask, train)
        x = norm("self_attn_norm")(x + drop(y))
        if self.cross:
            y = attention("cross_attn")(x + pos, memory + memory_pos, memory, memory_mask, train)
            x = norm("cross_attn_norm")(x + drop(y))
        y = _ACTIVATIONS[self.activation](_dense(self.ffn_dim, "fc1", self.dtype)(x))
        y = nn.Dropout(self.activation_dropout, deterministic=not train)(y)
        y = drop(_dense(self.d_model, "fc2", self.dtype)(y))
        return norm("final_norm")(x + y)


class _Stack(nn.Module):
    """``num_layers`` layers named ``layer_{i}``; the decoder's (``cross``) end in a LayerNorm ``norm``."""

    num_layers: int
    layer: dict
    cross: bool
    auxiliary_loss: bool

    @nn.compact
    def __call__(self, x, pos, memory, memory_pos, memory_mask, train: bool) -> tuple[jax.Array, list[jax.Array]]:
        norm = (
            nn.LayerNorm(epsilon=self.layer["layer_norm_eps"], dtype=self.layer["dtype"], name="norm")
            if self.cross
            else None
        )
        intermediate = []
        for i in range(self.num_layers):
            layer = _Layer(**self.layer, cross=self.cross, name=f"layer_{i}")
            x = layer(x, pos, memory, memory_pos, memory_mask, train)
            if norm is not None and self.auxiliary_loss:
                # As Hugging Face's DetrDecoder: the normalised output also feeds the next layer (the original
                # DETR normalised only a copy), and the last one is normalised twice.
                x = norm(x)
                intermediate.append(x)
        return (x if norm is None else norm(x)), intermediate


class _BoxHead(nn.Module):
    """Three layers, ReLU between them, a sigmoid at the end: normalised ``cx, cy, w, h``."""

    d_model: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.d_model, dtype=self.dtype, name="layer_0")(x))
        x = nn.relu(nn.Dense(self.d_model, dtype=self.dtype, name="layer_1")(x))
        return jax.nn.sigmoid(nn.Dense(4, dtype=self.dtype, name="layer_2")(x).astype(jnp.float32))


class DETR(nn.Module):
    """DETR's transformer and prediction heads over a backbone's last feature map (Hugging Face's
    ``DetrForObjectDetection`` without its backbone; the fields are ``DetrConfig``'s).

    Attributes:
      num_classes: foreground classes; the class head has one more, "no object", last.
      d_model: the transformer's width.
      encoder_layers: encoder layers.
      decoder_layers: decoder layers.
      encoder_attention_heads: encoder attention heads.
      decoder_attention_heads: decoder attention heads.
      encoder_ffn_dim: the encoder MLP's hidden width.
      decoder_ffn_dim: the decoder MLP's hidden width.
      num_queries: object queries: detections per image.
      dropout: dropout after attention and MLP blocks (and on the encoder's input).
      attention_dropout: dropout on attention weights.
      activation_dropout: dropout after the MLP's activation.
      activation: ``"relu"``, ``"gelu"`` or ``"silu"``.
      auxiliary_loss: also predict from each earlier decoder layer (``"aux"``), for the auxiliary losses.
      layer_norm_eps: the LayerNorms' epsilon.
      dtype: the computation dtype (outputs are float32).

    >>> detr = DETR(num_classes=3, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
    ...             decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=4)
    >>> features, pixel_mask = jnp.ones((2, 3, 3, 5)), jnp.ones((2, 96, 96), bool)
    >>> outputs, variables = jax.eval_shape(detr.init_with_output, jax.random.PRNGKey(0), features, pixel_mask)
    >>> outputs["logits"].shape, outputs["boxes"].shape
    ((2, 4, 4), (2, 4, 4))
    """

    num_classes: int = 91
    d_model: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    num_queries: int = 100
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation: str = "relu"
    auxiliary_loss: bool = False
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, feature_map: jax.Array, pixel_mask: jax.Array | None = None, *, train: bool = False
    ) -> dict[str, Any]:
        """Predicts ``num_queries`` boxes and class logits per image.

        Args:
          feature_map: (B, h, w, C) the backbone's last stage (stride 32 for ResNet).
          pixel_mask: (B, H, W) bool, True on real pixels: at the image's resolution (brought to the feature map's
            by nearest interpolation, as Hugging Face does) or already at (h, w). ``None``: all real.
          train: dropout on.

        Returns:
          ``{"logits": (B, Q, num_classes + 1), "boxes": (B, Q, 4)}`` (boxes ``cx, cy, w, h`` relative to each
          image's real size), and with ``auxiliary_loss`` ``"aux"``: the same for each earlier decoder layer.
        """
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"DETR activation {self.activation!r}: expected one of {sorted(_ACTIVATIONS)}")
        batch, height, width, _ = feature_map.shape
        mask = _feature_mask(pixel_mask, batch, height, width)
        x = nn.Conv(self.d_model, (1, 1), dtype=self.dtype, name="input_projection")(feature_map.astype(self.dtype))
        pos = sine_position_embedding(mask, self.d_model // 2).astype(self.dtype)
        x = x.reshape(batch, height * width, self.d_model)
        pos = pos.reshape(batch, height * width, self.d_model)
        key_mask = mask.reshape(batch, height * width)
        layer = {
            "d_model": self.d_model,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout,
            "activation": self.activation,
            "layer_norm_eps": self.layer_norm_eps,
            "dtype": self.dtype,
        }
        encoder = _Stack(
            self.encoder_layers,
            {**layer, "num_heads": self.encoder_attention_heads, "ffn_dim": self.encoder_ffn_dim},
            cross=False,
            auxiliary_loss=False,
            name="encoder",
        )
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        memory, _ = encoder(x, pos, None, None, key_mask, train)
        queries = self.param(
            "query_position_embeddings", nn.initializers.normal(1.0), (self.num_queries, self.d_model), jnp.float32
        )
        query_pos = jnp.broadcast_to(queries.astype(self.dtype), (batch, self.num_queries, self.d_model))
        decoder = _Stack(
            self.decoder_layers,
            {**layer, "num_heads": self.decoder_attention_heads, "ffn_dim": self.decoder_ffn_dim},
            cross=True,
            auxiliary_loss=self.auxiliary_loss,
            name="decoder",
        )
        hidden, intermediate = decoder(jnp.zeros_like(query_pos), query_pos, memory, pos, key_mask, train)
        class_head = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="class_head")
        box_head = _BoxHead(self.d_model, self.dtype, name="box_head")

        def predict(h: jax.Array) -> dict[str, jax.Array]:
            return {"logits": class_head(h).astype(jnp.float32), "boxes": box_head(h)}

        outputs = predict(hidden)
        if self.auxiliary_loss:
            outputs["aux"] = [predict(h) for h in intermediate[:-1]]
        return outputs


def detr_pixel_mask(sizes: jax.Array, height: int, width: int) -> jax.Array:
    """The mask of real pixels of images padded bottom and right.

    Args:
      sizes: (B, 2) int, each image's real (height, width).
      height: the padded height.
      width: the padded width.

    Returns:
      (B, height, width) bool.

    >>> detr_pixel_mask(jnp.array([[1, 2]]), 2, 3).astype(int).tolist()
    [[[1, 1, 0], [0, 0, 0]]]
    """
    rows = jnp.arange(height)[None, :, None] < sizes[:, 0, None, None]
    columns = jnp.arange(width)[None, None, :] < sizes[:, 1, None, None]
    return rows & columns


def detr_detect(outputs: Mapping[str, jax.Array], sizes: jax.Array, threshold: float = 0.0) -> dict[str, jax.Array]:
    """Detections from DETR's outputs, as Hugging Face's ``post_process_object_detection``: softmax, the no-object
    column dropped, the most likely class and its probability per query, boxes scaled to each image's real size.

    Args:
      outputs: :class:`DETR`'s ``{"logits", "boxes"}``.
      sizes: (B, 2) each image's real (height, width) in pixels.
      threshold: detections scoring at most this are not ``valid`` (0: every query, for mAP).

    Returns:
      ``{"boxes": (B, Q, 4) x0, y0, x1, y1 in pixels, "scores": (B, Q), "classes": (B, Q) int32 0..C-1,
      "valid": (B, Q) bool}``.

    >>> outputs = {"logits": jnp.array([[[0.0, 2.0, 0.0]]]), "boxes": jnp.array([[[0.5, 0.5, 0.5, 1.0]]])}
    >>> detections = detr_detect(outputs, jnp.array([[10, 20]]))
    >>> detections["boxes"].tolist(), detections["classes"].tolist()
    ([[[5.0, 0.0, 15.0, 10.0]]], [[1]])
    """
    prob = jax.nn.softmax(outputs["logits"].astype(jnp.float32), axis=-1)[..., :-1]
    scores = prob.max(-1)
    height, width = sizes[:, 0].astype(jnp.float32), sizes[:, 1].astype(jnp.float32)
    scale = jnp.stack([width, height, width, height], axis=-1)[:, None, :]
    return {
        "boxes": box_cxcywh_to_xyxy(outputs["boxes"].astype(jnp.float32)) * scale,
        "scores": scores,
        "classes": prob.argmax(-1).astype(jnp.int32),
        "valid": scores > threshold,
    }


def detr_loss_from_batch(
    outputs: Mapping[str, Any], batch: Mapping[str, jax.Array], **loss_options: float
) -> tuple[jax.Array, dict[str, Any]]:
    """DETR's set loss (:func:`detr_loss`) on a detection batch: target boxes, ``x0, y0, x1, y1`` in pixels, are
    normalised to ``cx, cy, w, h`` by each image's real size (as the original DETR does; Hugging Face's
    ``DetrImageProcessor`` divides by the padded size instead, which disagrees with its own post-processing).

    Args:
      outputs: :class:`DETR`'s outputs (``"aux"`` used when present).
      batch: ``boxes`` (B, M, 4), ``labels`` (B, M), ``box_mask`` (B, M) and ``size`` (B, 2).
      **loss_options: :func:`detr_loss`'s costs and weights.

    Returns:
      ``(loss, metrics)`` as :func:`detr_loss`.

    >>> outputs = {"logits": jnp.zeros((1, 2, 3)), "boxes": jnp.full((1, 2, 4), 0.5)}
    >>> batch = {"boxes": jnp.array([[[0.0, 0.0, 20.0, 10.0]]]), "labels": jnp.array([[1]]),
    ...          "box_mask": jnp.array([[True]]), "size": jnp.array([[20, 40]])}
    >>> loss, metrics = jax.jit(detr_loss_from_batch)(outputs, batch)
    >>> float(metrics["loss_bbox"])
    0.5
    """
    height, width = batch["size"][:, 0].astype(jnp.float32), batch["size"][:, 1].astype(jnp.float32)
    scale = jnp.stack([width, height, width, height], axis=-1)[:, None, :]
    boxes = box_xyxy_to_cxcywh(batch["boxes"].astype(jnp.float32)) / scale
    return detr_loss(
        outputs["logits"],
        outputs["boxes"],
        boxes,
        batch["labels"],
        batch["box_mask"],
        aux=outputs.get("aux", ()),
        **loss_options,
    )
