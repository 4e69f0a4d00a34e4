"""torchvision's ``trainable_backbone_layers`` as jtl freeze rules."""

from __future__ import annotations


def backbone_frozen(trainable_layers: int, num_stages: int = 4) -> tuple[str, ...]:
    """The ``config.frozen`` rules that train only the last ``trainable_layers`` of a ResNet-style backbone
    (stem ``embed``, stages ``stage_0..``), as torchvision's detection models do; every BatchNorm layer's scale and
    bias stay frozen too (torchvision's ``FrozenBatchNorm2d`` has none to train).

    Args:
      trainable_layers: 0 (all frozen) to ``num_stages + 1`` (the stem too); torchvision's default is 3.
      num_stages: the backbone's stages.

    Returns:
      Regexes on parameter names, for ``config.frozen``.

    >>> backbone_frozen(3)
    ('(.*/)?(bn\\\\d*|norm)/.*', 'embed/.*', 'stage_0/.*')
    >>> backbone_frozen(0)
    ('.*',)
    """
    if not 0 <= trainable_layers <= num_stages + 1:
        raise ValueError(f"trainable_layers={trainable_layers}: expected 0 to {num_stages + 1}")
    if trainable_layers == 0:
        return (".*",)
    rules = [r"(.*/)?(bn\d*|norm)/.*"]
    if trainable_layers <= num_stages:
        rules.append("embed/.*")
    rules += [f"stage_{s}/.*" for s in range(num_stages - trainable_layers)]
    return tuple(rules)
