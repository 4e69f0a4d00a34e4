"""Export: a layout's rules run backwards, from jtl's variables to the checkpoint keys the layout loads."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jtl.masking import named_leaves
from jtl.weights._convert import Rule, plain_template, same
from jtl.weights._layout import Layout
from jtl.weights._load import get_layout
from jtl.weights._readers import WeightLoadError

_GROUP_REF = re.compile(r"\\(\d+)|\\g<(\d+)>")


def target_regex(template: str) -> re.Pattern:
    """A rule's target template as a regex whose named groups ``g1``, ``g2``, ... recover its ``\\N``s."""
    parts, seen, start = [], set(), 0
    for ref in _GROUP_REF.finditer(template):
        number = ref.group(1) or ref.group(2)
        parts += [
            re.escape(template[start : ref.start()]),
            f"(?P=g{number})" if number in seen else f"(?P<g{number}>.*?)",
        ]
        seen.add(number)
        start = ref.end()
    return re.compile("".join([*parts, re.escape(template[start:])]))


def _expand(template: str, groups: Mapping[str, str]) -> str:
    return _GROUP_REF.sub(lambda ref: groups[f"g{ref.group(1) or ref.group(2)}"], template)


def export(
    variables: Mapping[str, Any], layout: Layout, fields: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Writes jtl variables under a layout's checkpoint keys: its rules run backwards.

    Each variable takes the first rule whose target it matches and whose key the loader reads back, with that
    rule, into that variable; the rule's ``export`` template (or its plain ``source``) names the key and its
    ``inverse`` undoes the transform. Exportable today: ``big_vision-vit`` and ``torchvision-resnet`` (Hugging Face
    layouts match optional prefixes, and ``torchvision-vgg``'s table depends on the checkpoint).

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` (host or device arrays).
      layout: the layout to write, e.g. ``jtl.weights.get_layout("big_vision-vit")``.
      fields: the model's fields that inverse transforms need (``{"num_heads": 12}`` for big_vision's
        per-head attention kernels).

    Returns:
      ``{checkpoint key: numpy array}``, for ``np.savez`` or ``safetensors.numpy.save_file``.

    Raises:
      WeightLoadError: listing every variable no rule writes back, at once.

    >>> from jtl import models
    >>> model = models.create("resnet-testing", num_classes=2)
    >>> state = export(models.init(model), get_layout("torchvision-resnet"))
    >>> state["conv1.weight"].shape, state["layer2.0.downsample.1.running_var"].shape
    ((8, 3, 7, 7), (16,))
    """
    if callable(layout.rules):
        raise WeightLoadError(f"layout {layout.name!r}: its table depends on the checkpoint; it cannot be exported")
    backward = [(target_regex(rule.target), rule) for rule in layout.rules if rule.target is not None]
    forward = [(re.compile(rule.source), rule) for rule in layout.rules]
    fields = dict(fields or {})
    host = jax.device_get(dict(named_leaves(variables)))  # one transfer for every leaf
    out, problems = {}, []
    for name, value in host.items():
        found = key_for(name, backward, forward)
        if isinstance(found, str):
            problems.append(f"{name}: {found}")
            continue
        key, rule = found
        try:
            array = value if rule.inverse is None else rule.inverse(np.asarray(value), fields)
            # Contiguous copies: safetensors' writer stores a transposed view's buffer as it lies in memory.
            out[key] = np.ascontiguousarray(array)
        except KeyError as e:
            problems.append(f"{name}: exporting it needs the model field {e.args[0]!r} (pass fields=)")
    if problems:
        raise WeightLoadError(f"export to {layout.name!r}: {len(problems)} problem(s): " + "; ".join(problems))
    return out


def key_for(
    name: str, backward: list[tuple[re.Pattern, Rule]], forward: list[tuple[re.Pattern, Rule]]
) -> tuple[str, Rule] | str:
    """The key a variable is written under and its rule: the first rule whose target matches the name and whose
    key the loader reads back with that same rule into that same name (a loose target such as
    ``attn/\\2/\\3`` also matches other layers' names); else why there is none."""
    why = None
    for regex, rule in backward:
        match = regex.fullmatch(name)
        if match is None:
            continue
        template = rule.export or plain_template(rule.source)
        if template is None or (rule.transform is not same and rule.inverse is None):
            why = why or f"rule {rule.source!r} is not invertible (give it export= and inverse=)"
            continue
        key = _expand(template, match.groupdict())
        loader = next(((m, r) for source, r in forward if (m := source.fullmatch(key))), None)
        if loader is not None and loader[1] is rule and loader[0].expand(rule.target) == name:
            return key, rule
        why = why or f"rule {rule.source!r} writes it as {key!r}, which does not load back into it"
    return why or "no rule writes it"


def save_big_vision_npz(path: str | os.PathLike, params: dict[str, Any], num_heads: int) -> None:
    """Writes jtl ViT params under big_vision's ``.npz`` names (for tests and for exporting to big_vision).

    Args:
      path: the ``.npz`` file to write.
      params: a jtl ViT's ``params``.
      num_heads: the model's attention heads (big_vision stores attention kernels per head).

    Returns:
      None.

    >>> import tempfile, os
    >>> from jtl.models import ViT
    >>> m = ViT(patch_size=4, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16, image_size=8, num_classes=2)
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> save_big_vision_npz(p, m.init(jax.random.PRNGKey(0), *m.example_inputs())["params"], num_heads=2)
    >>> "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in np.load(p).files
    True
    """
    np.savez(path, **export({"params": params}, get_layout("big_vision-vit"), {"num_heads": num_heads}))
