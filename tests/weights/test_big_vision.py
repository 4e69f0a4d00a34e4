"""big_vision/vit_jax `.npz` checkpoints: a reference written here in vit_jax's own module structure (flax's
MultiHeadDotProductAttention with per-head kernels, tanh GELU, LayerNorm eps 1e-6), saved under its names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.masking import named_leaves
from jtl.weights import load_pretrained

WIDTH, DEPTH, HEADS, MLP, PATCH, IMAGE, CLASSES, REPR = 16, 2, 2, 32, 4, 16, 5, 12


class MlpBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.gelu(nn.Dense(MLP, name="Dense_0")(x))
        return nn.Dense(WIDTH, name="Dense_1")(y)


class Encoder1DBlock(nn.Module):
    names: tuple

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(name=self.names[0])(x)
        y = nn.MultiHeadDotProductAttention(num_heads=HEADS, name=self.names[1])(y, y)
        x = x + y
        y = nn.LayerNorm(name=self.names[2])(x)
        return x + MlpBlock(name=self.names[3])(y)


class VisionTransformer(nn.Module):
    """vit_jax's VisionTransformer (classifier='token' or 'gap', optional representation_size)."""

    names: tuple
    classifier: str = "token"
    representation_size: int | None = REPR

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(WIDTH, (PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID", name="embedding")(x)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        if self.classifier == "token":
            cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, c))
            x = jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1)
        x = Transformer(self.names, name="Transformer")(x)
        x = x[:, 0] if self.classifier == "token" else x.mean(axis=1)
        if self.representation_size is not None:
            x = jnp.tanh(nn.Dense(self.representation_size, name="pre_logits")(x))
        return nn.Dense(CLASSES, name="head", kernel_init=nn.initializers.normal(0.1))(x)


class Transformer(nn.Module):
    names: tuple

    @nn.compact
    def __call__(self, x):
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], x.shape[2]))
        x = x + pos
        x = nn.Sequential([Encoder1DBlock(self.names, name=f"encoderblock_{i}") for i in range(DEPTH)])(x)
        return nn.LayerNorm(name="encoder_norm")(x)


OLD_NAMES = ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
NEW_NAMES = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")


def _save(tmp_path, params, *, stacked=False, move_posemb=False):
    flat = {name: np.asarray(x) for name, x in named_leaves(params)}
    if move_posemb:  # big_vision keeps pos_embedding at the top level
        flat["pos_embedding"] = flat.pop("Transformer/pos_embedding")
    else:
        flat["Transformer/posembed_input/pos_embedding"] = flat.pop("Transformer/pos_embedding")
    if stacked:  # big_vision with scan=True stacks the blocks
        per_block = {}
        for name in [n for n in flat if n.startswith("Transformer/encoderblock_")]:
            _, block, rest = name.split("/", 2)
            per_block.setdefault(rest, {})[int(block.split("_")[1])] = flat.pop(name)
        for rest, arrays in per_block.items():
            flat[f"Transformer/encoderblock/{rest}"] = np.stack([arrays[i] for i in sorted(arrays)])
    path = tmp_path / "vit.npz"
    np.savez(path, **flat)
    return path


@pytest.mark.parametrize(
    "names, classifier, representation, stacked",
    [
        (OLD_NAMES, "token", REPR, False),  # published vit_jax checkpoints
        (NEW_NAMES, "token", None, False),
        (NEW_NAMES, "gap", None, True),  # big_vision, scanned
    ],
)
def test_npz_logits_equal_the_reference(names, classifier, representation, stacked, tmp_path):
    reference = VisionTransformer(names, classifier, representation)
    images = jax.random.normal(jax.random.PRNGKey(1), (2, IMAGE, IMAGE, 3))
    params = reference.init(jax.random.PRNGKey(0), images)["params"]
    expected = reference.apply({"params": params}, images)
    path = _save(tmp_path, params, stacked=stacked, move_posemb=stacked)

    model, variables, report = load_pretrained(path, verbose=False)
    assert not report.missing and not report.unexpected
    assert (model.pooling, model.pre_logits_size, model.num_heads) == (
        "cls" if classifier == "token" else "gap",
        representation,
        HEADS,
    )
    logits = model.apply(variables, images)
    assert float(jnp.max(jnp.abs(logits - expected))) < 1e-5


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, cls=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled arrays are refused"):
        load_pretrained(path, verbose=False)
