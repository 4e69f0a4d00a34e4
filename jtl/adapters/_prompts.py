"""Visual Prompt Tuning (Jia et al., 2022): learned prompt tokens inserted after the class token (and registers) of
a ViT-style encoder, shallow (once, before the first block) or deep (fresh prompts before every block).

The prompts are parameters beside the blocks they enter (``encoder/block_{i}/vpt_prompt``, (tokens, hidden)); the
interceptor of each ``encoder/block_{i}`` puts them into the block's input (extending an attention mask) and takes
the prompt outputs out after the last block (deep: after every block, as the next block's prompts replace them),
so the final norm, the pooling and the head see the usual tokens. With shallow prompts the intermediate hidden
states that the encoder sows hold the prompt tokens too.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

import jtl.masking as jm
from jtl.adapters._method import register

PyTree = Any

_BLOCK = re.compile(r"block_(\d+)")
# Families whose blocks cannot take extra tokens, and why.
_REFUSED = {
    "Beit": "its relative position bias tables are sized for the patch tokens",
    "Swin": "its windowed attention works on the patch grid",
    "Swinv2": "its windowed attention works on the patch grid",
}
_SUPPORTED = "ViT/DeiT, DINOv2, CLIP and SigLIP vision towers"


@register
class PromptSpec(NamedTuple):
    """How many prompts, and where.

    Attributes:
      num_tokens: prompt tokens per block that takes them.
      deep: fresh prompts for every block (VPT-deep) instead of once before the first (VPT-shallow).

    >>> spec = PromptSpec(num_tokens=5, deep=True)
    >>> spec.kind, spec.leaves, spec.trainable
    ('vpt', ('vpt_prompt',), ('.*/vpt_prompt',))
    """

    num_tokens: int = 10
    deep: bool = False

    kind = "vpt"
    leaves = ("vpt_prompt",)
    scan_refusal = (
        "its interceptor tells the blocks apart by name (prompts enter before block_0 and leave after the last "
        "block), which the one traced body of a scanned encoder cannot"
    )

    @property
    def trainable(self) -> tuple[str, ...]:
        """The prompts."""
        return (".*/vpt_prompt",)

    def add(self, params: PyTree, rng: jax.Array) -> PyTree:
        """Adds ``vpt_prompt`` (num_tokens, hidden) to ``encoder/block_0`` (shallow) or to every block (deep),
        uniform in ``±sqrt(6 / (patch dim + hidden))`` as the VPT paper (``patch dim``: the patch embedding's
        inputs, ``3 * patch * patch`` for RGB).

        Args:
          params: a ViT-style vision model's parameter tree.
          rng: the PRNG key.

        Returns:
          The new tree; the base leaves are the same arrays.

        Raises:
          jtl.masking.MaskingError: the tree has no ``encoder/block_{i}`` blocks or patch embedding, or has
            relative position bias tables (BEiT).

        >>> from jtl import models
        >>> params = models.init(models.create("vit-testing", num_classes=3))["params"]
        >>> PromptSpec(num_tokens=4).add(params, jax.random.PRNGKey(0))["encoder"]["block_0"]["vpt_prompt"].shape
        (4, 16)
        """
        encoder = params.get("encoder")
        blocks = sorted(
            (k for k in encoder if _BLOCK.fullmatch(k)) if isinstance(encoder, dict) else (),
            key=lambda k: int(k.removeprefix("block_")),
        )
        if not blocks:
            raise jm.MaskingError(
                f"VPT inserts prompt tokens into a ViT-style encoder (encoder/block_{{i}}: {_SUPPORTED}); these "
                f"params have {sorted(params)} (a windowed model such as Swin names its blocks stage_{{s}}/block_{{i}})"
            )
        tables = [n for n, _ in jm.named_leaves(params) if n.endswith("rel_pos_embedding")]
        if tables:
            raise jm.MaskingError(f"VPT cannot adapt BEiT-style models ({tables[0]}): {_REFUSED['Beit']}")
        patch = params.get("embed", {}).get("patch", {}).get("kernel")
        if patch is None:
            raise jm.MaskingError(f"VPT needs a vision encoder with embed/patch ({_SUPPORTED}); got {sorted(params)}")
        hidden = encoder[blocks[0]]["attn"]["query"]["kernel"].shape[0]
        bound = math.sqrt(6.0 / (math.prod(patch.shape[:-1]) + hidden))
        prompted = {
            name: {
                **encoder[name],
                "vpt_prompt": jax.random.uniform(
                    jax.random.fold_in(rng, i), (self.num_tokens, hidden), jnp.float32, -bound, bound
                ),
            }
            for i, name in enumerate(blocks if self.deep else blocks[:1])
        }
        return {**params, "encoder": {**encoder, **prompted}}

    def intercept(self, next_fun: Any, args: tuple, kwargs: dict, context: Any, train: bool) -> Any:
        """Puts the prompts into an encoder block's input (after the class token and registers) and takes their
        outputs out after the last block (deep: after each); other calls pass through.

        Raises:
          jtl.masking.MaskingError: the model is not one of the supported vision towers.
        """
        module = context.module
        encoder = module.parent
        match = _BLOCK.fullmatch(module.name or "")
        if not (context.method_name == "__call__" and match and isinstance(encoder, nn.Module)):
            return next_fun(*args, **kwargs)
        if encoder.name != "encoder":
            return next_fun(*args, **kwargs)
        prefix = _prefix_tokens(_root(module))
        if "vpt_prompt" not in encoder.variables.get("params", {}).get("block_0", {}):
            return next_fun(*args, **kwargs)  # no prompts added (e.g. while initialising)
        index, last = int(match.group(1)), encoder.num_layers - 1
        x, mask, *rest = (*args, None) if len(args) == 1 else args
        n = self.num_tokens
        if self.deep or index == 0:
            prompt = module.get_variable("params", "vpt_prompt")
            if prompt is None:
                raise jm.MaskingError(f"{module.name} has no vpt_prompt: its params were added by another spec")
            prompt = jnp.broadcast_to(prompt.astype(x.dtype), (x.shape[0], n, x.shape[-1]))
            x = jnp.concatenate([x[:, :prefix], prompt, x[:, prefix:]], axis=1)
        if mask is not None:  # (batch, tokens): the prompts are real tokens
            mask = jnp.asarray(mask)
            ones = jnp.ones((mask.shape[0], n), mask.dtype)
            mask = jnp.concatenate([mask[:, :prefix], ones, mask[:, prefix:]], axis=1)
        out = next_fun(x, mask, *rest, **kwargs)
        if self.deep or index == last:
            out = jnp.concatenate([out[:, :prefix], out[:, prefix + n :]], axis=1)
        return out

    def merge(self, params: PyTree) -> PyTree:
        """Prompts cannot be merged.

        Raises:
          ValueError: always; the prompts are extra tokens, not a change of the base weights.

        >>> PromptSpec().merge({})
        Traceback (most recent call last):
        ...
        ValueError: VPT prompts cannot be merged: ...
        """
        raise ValueError(
            "VPT prompts cannot be merged: they are extra tokens the base model's weights cannot express; run the "
            "model from with_adapters"
        )

    def unmerge(self, merged: PyTree, adapters: PyTree) -> PyTree:
        """Prompts are never merged (see :meth:`merge`), so there is nothing to unmerge.

        Raises:
          ValueError: always.
        """
        return self.merge(merged)


def _root(module: nn.Module) -> nn.Module:
    while isinstance(module.parent, nn.Module):
        module = module.parent
    return module


def _prefix_tokens(model: nn.Module) -> int:
    """The tokens before the patches that the prompts follow; refuses families whose blocks cannot take them."""
    # Imported here: jtl.models imports every family, which importing jtl.adapters should not.
    from jtl.models import Clip, Dinov2, Siglip, ViT

    if isinstance(model, ViT):
        return (model.pooling != "gap") + model.distillation_token
    if isinstance(model, Dinov2):
        return 1 + model.num_registers
    if isinstance(model, Clip):
        return 1
    if isinstance(model, Siglip):
        return 0
    family = type(model).__name__.removeprefix("Adapted")
    reason = _REFUSED.get(family, "it is not a ViT-style vision encoder")
    raise jm.MaskingError(f"VPT cannot adapt {family}: {reason}; it supports {_SUPPORTED}")
