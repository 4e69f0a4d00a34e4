"""``Layout``: one checkpoint layout of a model family, as the family registers it, and helpers to write one."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jtl.weights._convert import Resizer, Rule
from jtl.weights._readers import WeightLoadError

State = Mapping[str, Any]  # checkpoint key -> array, or -> TensorSpec where only the file's header was read

#: The variables that head surgery (``load_pretrained(..., num_classes=...)``) replaces in every family.
HEAD = r"params/head/.*"
#: :attr:`Layout.classifier` of a layout whose pooler exists only inside the source's classifier model.
HEAD_AND_POOLER = r"params/(?:head|pooler)/.*"


def no_resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict[str, Resizer]:
    """The default of :attr:`Layout.resizers`: no variable may change shape."""
    del fields, source
    return {}


class Layout(NamedTuple):
    """How one checkpoint layout becomes a jtl model; a family lists its layouts when it registers.

    Attributes:
      name: e.g. ``"hf-vit"``, ``"big_vision-vit"``; in reports and errors.
      rules: the table, or a function of the checkpoint's tensors that builds it (where names depend on the
        architecture); every rule invertible (see :class:`Rule`) makes the layout exportable.
      fields: ``(config, state) -> the model's fields``: ``config`` is Hugging Face's ``config.json`` (``{}``
        for a bare file), ``state`` the tensors (shapes and dtypes only, for a safetensors file).
      detect: claims a bare file from its tensor names (``None``: never claims one).
      model_types: the Hugging Face ``config.json`` ``model_type`` values it serves.
      resizers: ``(fields, source fields) -> {regex: resize(array, target_shape)}``, the variables that may
        change with the model's fields (ViT position embeddings follow the image size), given the fields the
        checkpoint was read with and those after the caller's changes; a resize returns its input itself when
        nothing changes.
      prepare: applied to the tensors before the rules (big_vision's stacked blocks are split); a layout with
        one has its files read at once, not header first.
      renames: ``(regex, replacement)`` pairs that turn a checkpoint key into the name transformers v5 gives the
        tensor in memory, where its modules were renamed (``vit.encoder.layer.0.attention.attention.query`` is
        ``vit.layers.0.attention.q_proj``): transformers' own ``conversion_mapping`` for the model, kept here as
        data because reading it imports torch. Each applies once, in order (see :func:`in_memory_key`). PEFT
        adapters name modules this way.
      classifier: regex of the jtl variables that the source's classifier model (``...ForSequenceClassification``)
        holds in its classification head: the head, and the pooler where that model alone has one (ELECTRA's
        ``classifier.dense``; its base model has none). With a new head, those a checkpoint lacks (a base model's)
        are freshly initialised, as transformers initialises them, and reported as re-initialised, not missing.

    >>> from jtl.weights import linear
    >>> fields = lambda config, state: {"num_classes": state["fc.weight"].shape[0]}
    >>> layout = Layout("one-linear", linear("fc", "head"), fields, detect=lambda keys: "fc.weight" in keys)
    >>> layout.detect({"fc.weight", "fc.bias"}), [rule.target for rule in layout.rules_for({})]
    (True, ['params/head/kernel', 'params/head/bias'])
    """

    name: str
    rules: Sequence[Rule] | Callable[[State], list[Rule]]
    fields: Callable[[dict[str, Any], State], dict[str, Any]]
    detect: Callable[[Collection[str]], bool] | None = None
    model_types: tuple[str, ...] = ()
    resizers: Callable[[dict[str, Any], dict[str, Any]], dict[str, Resizer]] = no_resizers
    prepare: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    renames: tuple[tuple[str, str], ...] = ()
    classifier: str = HEAD

    def rules_for(self, state: State) -> list[Rule]:
        """The table for these tensors."""
        return self.rules(state) if callable(self.rules) else list(self.rules)


#: transformers v5's renaming of the ViT-style modules (its ``"ViTModel"`` conversion mapping), which ViT, DeiT,
#: BEiT and AST share.
VIT_MODULE_RENAMES = (
    (r"encoder\.layer\.", "layers."),
    (r"attention\.attention\.query", "attention.q_proj"),
    (r"attention\.attention\.key", "attention.k_proj"),
    (r"attention\.attention\.value", "attention.v_proj"),
    (r"attention\.output\.dense", "attention.o_proj"),
    (r"intermediate\.dense", "mlp.fc1"),
    (r"output\.dense", "mlp.fc2"),
)


def in_memory_key(layout: Layout, key: str) -> str:
    """The name transformers v5 gives a checkpoint key's tensor in memory (the key itself where the layout has no
    ``renames``): what PEFT adapters are keyed by.

    Args:
      layout: the checkpoint's layout.
      key: a checkpoint key.

    Returns:
      The in-memory name.

    >>> from jtl.weights import get_layout
    >>> in_memory_key(get_layout("hf-vit"), "vit.encoder.layer.0.attention.attention.query.weight")
    'vit.layers.0.attention.q_proj.weight'
    >>> in_memory_key(get_layout("hf-bert"), "bert.encoder.layer.0.attention.self.query.weight")
    'bert.encoder.layer.0.attention.self.query.weight'
    """
    for pattern, replacement in layout.renames:
        key = re.sub(pattern, replacement, key, count=1)
    return key


def first_match(state: State, pattern: str) -> Any:
    """The first tensor whose key fullmatches ``pattern``: what a layout's ``fields`` reads sizes from.

    Args:
      state: ``{checkpoint key: array or TensorSpec}``.
      pattern: a regex.

    Returns:
      The tensor (or its spec), ``None`` when no key matches.

    >>> first_match({"a.0.weight": np.zeros((2, 3))}, r"a\\.\\d+\\.weight").shape
    (2, 3)
    """
    regex = re.compile(pattern)
    return next((v for k, v in state.items() if regex.fullmatch(k)), None)


_TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh"}


def hf_gelu_approximate(config: Mapping[str, Any]) -> bool:
    """Whether a Hugging Face ``config.json``'s ``hidden_act`` is the tanh-approximate GELU.

    Args:
      config: the parsed ``config.json``.

    Returns:
      The model's ``gelu_approximate`` field.

    Raises:
      WeightLoadError: for an activation other than a GELU.

    >>> hf_gelu_approximate({"hidden_act": "gelu"}), hf_gelu_approximate({"hidden_act": "gelu_new"})
    (False, True)
    """
    act = config.get("hidden_act", "gelu")
    if act not in _TANH_GELUS | {"gelu", "gelu_python"}:
        raise WeightLoadError(f"config.json: hidden_act={act!r} is not supported (GELU variants only)")
    return act in _TANH_GELUS


def _keys_cubic(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``d``: PyTorch's bicubic uses a = -0.75, PIL's (and PyTorch's
    antialiased bicubic) a = -0.5."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of PyTorch's bicubic interpolation along one axis (``align_corners=False``, no
    antialias): Keys' kernel with a = -0.75, source coordinates ``(i + 0.5) * n_in / n_out - 0.5`` (not clamped),
    taps clamped to the border."""
    source = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    floor = np.floor(source)
    t = source - floor
    weights = np.stack([_keys_cubic(d, -0.75) for d in (t + 1, t, 1 - t, 2 - t)], axis=1)
    matrix = np.zeros((n_out, n_in))
    for tap in range(4):
        columns = np.clip(floor.astype(np.int64) - 1 + tap, 0, n_in - 1)
        np.add.at(matrix, (np.arange(n_out), columns), weights[:, tap])
    return matrix


def _antialiased_cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of PyTorch's ``antialias=True`` bicubic (PIL's resampling): Keys' kernel with
    a = -0.5, widened by the downscaling factor, taps beyond the border dropped and each row normalised."""
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), n_in)
        taps = np.arange(low, high)
        weights = _keys_cubic((taps - center + 0.5) * inverse, -0.5)
        matrix[i, taps] = weights / weights.sum() if weights.sum() else weights
    return matrix


def resize_grid(grid: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """Resizes an (H, W, C) grid of embeddings.

    Args:
      grid: the embeddings.
      size: the new (H, W).
      method: ``"bilinear"`` (``jax.image.resize``, as vit_jax and big_vision resample), ``"bicubic"`` (PyTorch's
        ``F.interpolate(mode="bicubic", align_corners=False)``, as Hugging Face's ViT and DINOv2 interpolate) or
        ``"bicubic-antialias"`` (the same with ``antialias=True``, as DINOv2 with registers does).

    Returns:
      The resized float32 grid.

    >>> grid = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    >>> resize_grid(grid, (8, 8), "bicubic").shape, float(resize_grid(grid, (4, 4), "bicubic")[1, 2, 0])
    ((8, 8, 1), 6.0)
    """
    grid = np.asarray(grid, np.float32)
    if method == "bilinear":
        return np.asarray(jax.image.resize(grid, (*size, grid.shape[-1]), method="bilinear"))
    weights = {"bicubic": _cubic_weights, "bicubic-antialias": _antialiased_cubic_weights}.get(method)
    if weights is None:
        raise ValueError(f"resize method {method!r}: expected 'bilinear', 'bicubic' or 'bicubic-antialias'")
    rows, columns = weights(grid.shape[0], size[0]), weights(grid.shape[1], size[1])
    return np.einsum("oh,hwc,pw->opc", rows, grid.astype(np.float64), columns).astype(np.float32)


def adapt_input_channels(kernel: np.ndarray, target_shape: tuple) -> np.ndarray:
    """A first convolution trained on RGB, for another number of input channels, as timm's ``adapt_input_conv``:
    one channel gets the sum over RGB (a grey image gives what it gives repeated as RGB); N channels get RGB
    repeated and cut to N, scaled by 3 / N (the activations keep their scale).

    Args:
      kernel: the checkpoint's (height, width, 3, out) kernel (Flax's HWIO).
      target_shape: the model's kernel shape, which differs in the input channels only.

    Returns:
      The kernel for ``target_shape``.

    >>> kernel = np.ones((1, 1, 3, 2), np.float32)
    >>> adapt_input_channels(kernel, (1, 1, 1, 2))[0, 0, :, 0].tolist()
    [3.0]
    >>> adapt_input_channels(kernel, (1, 1, 4, 2))[0, 0, :, 0].tolist()
    [0.75, 0.75, 0.75, 0.75]
    """
    if tuple(kernel.shape) == tuple(target_shape):
        return kernel
    channels = target_shape[2]
    if kernel.ndim != 4 or tuple(kernel.shape[:2]) + kernel.shape[3:] != tuple(target_shape[:2]) + target_shape[3:]:
        raise WeightLoadError(f"input convolution {kernel.shape} -> {target_shape}: only the input channels may differ")
    if kernel.shape[2] != 3:
        raise WeightLoadError(f"input convolution {kernel.shape}: adapting input channels needs an RGB (3-channel) one")
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeats = -(-channels // 3)
    return (np.tile(kernel, (1, 1, repeats, 1))[:, :, :channels] * (3 / channels)).astype(kernel.dtype)


def resample_pos_embedding(
    num_prefix_tokens: int,
    method: str = "bilinear",
    grid: tuple[int, int] | None = None,
    source_grid: tuple[int, int] | None = None,
) -> Resizer:
    """Resamples ViT position embeddings to a new patch grid, keeping the prefix tokens' embeddings, as the
    source's own code does at a new resolution: bilinear for vit_jax and big_vision, PyTorch's bicubic for Hugging
    Face's ViT and DINOv2.

    Args:
      num_prefix_tokens: tokens before the patch grid (1 for a class token).
      method: ``"bilinear"``, ``"bicubic"`` or ``"bicubic-antialias"`` (see :func:`resize_grid`).
      grid: the new patch grid (rows, columns); ``None``: square.
      source_grid: the checkpoint's patch grid; ``None``: square. Embeddings already on ``grid`` are returned
        as they are.

    Returns:
      ``resize(pos (1, prefix + n*n, D), target_shape) -> (1, prefix + rows*columns, D)``.

    >>> resize = resample_pos_embedding(1)
    >>> resize(np.ones((1, 1 + 4 * 4, 8), np.float32), (1, 1 + 6 * 6, 8)).shape
    (1, 37, 8)
    """

    def resize(pos: np.ndarray, target_shape: tuple) -> np.ndarray:
        prefix, old_grid = pos[:, :num_prefix_tokens], pos[0, num_prefix_tokens:]
        old = tuple(source_grid or (math.isqrt(old_grid.shape[0]),) * 2)
        new_count = target_shape[1] - num_prefix_tokens
        new = tuple(grid or (math.isqrt(new_count),) * 2)
        if old[0] * old[1] != old_grid.shape[0] or new[0] * new[1] != new_count:
            raise WeightLoadError(
                f"position embeddings {pos.shape} -> {target_shape}: expected the source's patch grid "
                f"{old[0]}x{old[1]} and the target's {new[0]}x{new[1]}"
            )
        if old == new:
            return pos
        resized = resize_grid(old_grid.reshape(*old, -1), new, method)
        return np.concatenate([prefix, resized.reshape(1, new_count, -1)], axis=1)

    return resize
