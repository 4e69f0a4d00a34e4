"""A model family defined in this file alone, registered through ``jtl.models.register``, goes through every
generic path: loading from its own checkpoint layout, creation, freezing by layer index, training, export."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

import jtl.masking as jm
from jtl import models
from jtl.weights import Layout, Rule, export, load_pretrained, save_pretrained


class ToyNet(nn.Module):
    """Flattened images -> ``embed`` -> residual ``encoder/block_{i}`` -> ``head``, uniform names."""

    width: int = 8
    num_layers: int = 2
    image_size: int = 4
    num_channels: int = 1
    num_classes: int = 3

    def example_inputs(self, batch_size: int = 1):
        return (jnp.zeros((batch_size, self.image_size, self.image_size, self.num_channels)),)

    @nn.compact
    def __call__(self, images, *, train=False):
        x = nn.Dense(self.width, name="embed")(images.reshape(images.shape[0], -1))
        x = ToyEncoder(self.num_layers, name="encoder")(x)
        return nn.Dense(self.num_classes, name="head")(x) if self.num_classes else x


class ToyEncoder(nn.Module):
    num_layers: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = x + jnp.tanh(nn.Dense(x.shape[-1], name=f"block_{i}")(x))
        return x


# The toy's own checkpoint layout: other key names, and kernels stored (out, in) as PyTorch does.
def _untranspose(x, fields):
    return x.T


TOY_RULES = [
    Rule(r"toy\.stem\.w", "params/embed/kernel", np.transpose, inverse=_untranspose),
    Rule(r"toy\.stem\.b", "params/embed/bias"),
    Rule(r"toy\.layers\.(\d+)\.w", r"params/encoder/block_\1/kernel", np.transpose, inverse=_untranspose),
    Rule(r"toy\.layers\.(\d+)\.b", r"params/encoder/block_\1/bias"),
    Rule(r"toy\.out\.w", "params/head/kernel", np.transpose, inverse=_untranspose),
    Rule(r"toy\.out\.b", "params/head/bias"),
]


def toy_fields(config, state):
    width, pixels = state["toy.stem.w"].shape
    return {
        "width": width,
        "num_layers": len([k for k in state if k.startswith("toy.layers.") and k.endswith(".w")]),
        "image_size": int(np.sqrt(pixels)),
        "num_channels": 1,
        "num_classes": state["toy.out.w"].shape[0] if "toy.out.w" in state else 0,
    }


TOY_LAYOUT = Layout("toy-format", TOY_RULES, toy_fields, detect=lambda keys: "toy.stem.w" in keys)


def toy_layer_index(model):
    return jm.block_layer_index(model.num_layers), model.num_layers + 1


TOY = models.Family(
    "toy", ToyNet, {"toy-testing": {"width": 8, "num_layers": 2}}, toy_layer_index, "image", (TOY_LAYOUT,)
)


@pytest.fixture
def toy():
    family = models.register(TOY)
    yield family
    models.unregister(TOY.name)


def _checkpoint(tmp_path, num_layers=2, width=8, classes=3):
    rng = np.random.default_rng(0)
    state = {"toy.stem.w": rng.normal(size=(width, 16)), "toy.stem.b": rng.normal(size=width)}
    for i in range(num_layers):
        state[f"toy.layers.{i}.w"] = rng.normal(size=(width, width))
        state[f"toy.layers.{i}.b"] = rng.normal(size=width)
    state["toy.out.w"], state["toy.out.b"] = rng.normal(size=(classes, width)), rng.normal(size=classes)
    state = {k: v.astype(np.float32) for k, v in state.items()}
    path = tmp_path / "toy.safetensors"
    save_file(state, str(path))
    return path, state


def _assert_equal_trees(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (name, x), (_, y) in zip(jm.named_leaves(a), jm.named_leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y), name


def test_loads_from_its_own_layout(toy, tmp_path):
    path, state = _checkpoint(tmp_path, num_layers=3)
    model, variables, report = load_pretrained(path, verbose=False)
    assert type(model) is ToyNet and (model.num_layers, model.width, model.num_classes) == (3, 8, 3)
    assert not report.missing and not report.unexpected and len(report.loaded) == len(state) == 10
    params = variables["params"]
    np.testing.assert_array_equal(params["embed"]["kernel"], state["toy.stem.w"].T)
    np.testing.assert_array_equal(params["encoder"]["block_2"]["kernel"], state["toy.layers.2.w"].T)
    np.testing.assert_array_equal(params["head"]["bias"], state["toy.out.b"])
    assert models.family_of(model) is toy and models.input_kind(model) == "image"


def test_subclasses_belong_to_the_family(toy):
    # jtl.adapters.with_adapters wraps a model in a subclass of its class; registry look-ups go along the MRO.
    wrapped = type("LoRAToyNet", (ToyNet,), {})(num_layers=3)
    assert models.family_of(wrapped) is toy and models.input_kind(wrapped) == "image"
    assert models.layer_index(wrapped)[1] == 4


def test_registry_knows_it(toy):
    assert "toy-testing" in models.available() and toy in models.families()
    model = models.create("toy-testing", num_classes=5)
    assert isinstance(model, ToyNet) and model.num_classes == 5
    variables = models.init(model)
    assert variables["params"]["head"]["kernel"].shape == (8, 5)
    assert model.apply(variables, *model.example_inputs(2)).shape == (2, 5)


def test_registration_is_undone_and_clashes_are_refused(toy):
    with pytest.raises(ValueError, match=r"family 'toy': already registered: .*'toy-testing'"):
        models.register(TOY)
    with pytest.raises(ValueError, match=r"already registered: \{'layout': \['hf-vit'\]"):
        models.register(TOY._replace(name="toy2", model=ToyEncoder, configs={}, layouts=(models.vit.HF_VIT,)))
    models.unregister("toy")
    assert "toy-testing" not in models.available()
    with pytest.raises(TypeError, match="ToyNet is not a model of a registered family"):
        models.layer_index(ToyNet())
    models.register(TOY)  # for the fixture to undo


def test_freezes_and_trains_by_layer_index(toy):
    model = models.create("toy-testing", num_classes=2)
    params = models.init(model)["params"]
    layer_of, top = models.layer_index(model)
    assert (layer_of("embed/kernel"), layer_of("encoder/block_1/bias"), layer_of("head/kernel"), top) == (0, 2, 3, 3)
    trainable = models.top_layers(model, 2)  # the last block and the head
    mask = dict(jm.named_leaves(trainable(params)))
    assert [name for name, trains in mask.items() if trains] == [
        "encoder/block_1/bias",
        "encoder/block_1/kernel",
        "head/bias",
        "head/kernel",
    ]
    tx = jm.freeze(optax.adam(1e-2), trainable=trainable)
    images = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 4, 1))
    labels = jnp.array([0, 1, 0, 1])

    def loss_fn(p):
        logits = model.apply({"params": p}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, opt_state):
        loss, grads = jm.value_and_grad(loss_fn, trainable)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    trained, opt_state = params, tx.init(params)
    losses = []
    for _ in range(5):
        trained, opt_state, loss = step(trained, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
    for (name, before), (_, after) in zip(jm.named_leaves(params), jm.named_leaves(trained), strict=True):
        assert np.array_equal(before, after) != mask[name], name


def test_exports_back_to_its_layout_and_through_save_pretrained(toy, tmp_path):
    path, state = _checkpoint(tmp_path)
    model, variables, _ = load_pretrained(path, verbose=False)
    exported = export(variables, TOY_LAYOUT)
    assert sorted(exported) == sorted(state)
    assert all(np.array_equal(exported[k], state[k]) for k in state)
    save_file(exported, str(tmp_path / "exported.safetensors"))
    _, reloaded, report = load_pretrained(tmp_path / "exported.safetensors", verbose=False)
    assert not report.missing and not report.unexpected
    _assert_equal_trees(reloaded, variables)
    loaded, restored, _ = load_pretrained(save_pretrained(tmp_path / "native", model, variables), verbose=False)
    assert loaded == model
    _assert_equal_trees(restored, variables)
