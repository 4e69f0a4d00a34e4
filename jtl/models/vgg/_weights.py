"""The VGG family's weight layout: torchvision ``vgg16``/``vgg19`` state dicts (``features.N``/``classifier.N``).

Not exportable: the table depends on the checkpoint (where the max-pools fall between the convolutions).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from jtl.weights import Layout, Rule, WeightLoadError, adapt_input_channels, conv, linear


def resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
    """The first convolution follows the number of input channels (timm's ``adapt_input_conv``)."""
    del fields, source
    return {r"params/encoder/block_0/kernel": adapt_input_channels}


def _conv_indices(state: Mapping[str, Any]) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"features\.(\d+)\.weight", k))})


def torchvision_vgg_rules(state: Mapping[str, Any]) -> list[Rule]:
    indices = _conv_indices(state)
    channels = state[f"features.{indices[-1]}.weight"].shape[0] if indices else 1

    def fc1_from_nchw(x: np.ndarray) -> np.ndarray:
        # torchvision flattens (C, 7, 7); jtl flattens NHWC (7, 7, C): reorder the input dimension.
        pool = math.isqrt(x.shape[1] // channels)
        return x.reshape(x.shape[0], channels, pool, pool).transpose(2, 3, 1, 0).reshape(-1, x.shape[0])

    rules = [rule for i, index in enumerate(indices) for rule in conv(rf"features\.{index}", f"encoder/block_{i}")]
    return [
        *rules,
        Rule(r"classifier\.0\.weight", "params/fc1/kernel", fc1_from_nchw),
        Rule(r"classifier\.0\.bias", "params/fc1/bias"),
        *linear(r"classifier\.3", "fc2"),
        *linear(r"classifier\.6", "head"),
    ]


def torchvision_vgg_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    del config
    indices = _conv_indices(state)
    if not indices or "classifier.0.weight" not in state:
        raise WeightLoadError("not a torchvision VGG state dict: expected 'features.N.*' and 'classifier.N.*' keys")
    if "features.1.weight" in state and state["features.1.weight"].ndim == 1:
        raise WeightLoadError("VGG with batch norm (vgg16_bn) is not supported")
    layers: list = []
    previous = None
    for index in indices:
        if previous is not None and index - previous == 3:  # conv, relu, then a max-pool between them
            layers.append("M")
        layers.append(int(state[f"features.{index}.weight"].shape[0]))
        previous = index
    layers.append("M")
    channels = layers[-2]
    fc1 = state["classifier.0.weight"]
    return {
        "layers": tuple(layers),
        "classifier_width": fc1.shape[0],
        "pool_size": math.isqrt(fc1.shape[1] // channels),
        "num_channels": state[f"features.{indices[0]}.weight"].shape[1],
        "num_classes": state["classifier.6.weight"].shape[0] if "classifier.6.weight" in state else 0,
    }


def is_torchvision_vgg(keys: Collection[str]) -> bool:
    """torchvision's VGG names: ``features.N`` convolutions and ``classifier.N`` linears."""
    return "features.0.weight" in keys and any(k.startswith("classifier.") for k in keys)


TORCHVISION_VGG = Layout(
    "torchvision-vgg", torchvision_vgg_rules, torchvision_vgg_fields, detect=is_torchvision_vgg, resizers=resizers
)
