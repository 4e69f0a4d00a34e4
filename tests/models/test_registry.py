import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtl.masking as jm
from jtl.models import Albert, Bert, Dinov2, ResNet, ViT, available, create, families, init, input_kind, layer_index


def test_every_registered_name_creates_its_family():
    families = {"vit": ViT, "dinov2": Dinov2, "bert": Bert, "minilm": Bert, "resnet": ResNet}
    families |= {"distilbert": Bert, "electra": Bert, "albert": Albert}
    for name in available():
        model = create(name, num_classes=3)
        expected = families.get(name.split("-")[0])
        if expected is not None:
            assert isinstance(model, expected), name
        assert model.num_classes == 3


def test_vit_sizes_follow_the_papers():
    assert [create(f"vit-{s}16").hidden_size for s in ("ti", "s", "b", "l")] == [192, 384, 768, 1024]
    assert create("vit-l16").num_layers == 24 and create("vit-b32").patch_size == 32
    assert create("vit-s14").patch_size == 14 and create("vit-b8").patch_size == 8


def test_unknown_names_and_fields_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown model 'vit-x16'; known: \['vit-b14'"):
        create("vit-x16")
    with pytest.raises(ValueError, match=r"ViT has no field\(s\) \['imagesize'\]"):
        create("vit-b16", imagesize=384)


# A tiny config of every family.
TESTING = [next(name for name in family.configs if name.endswith("-testing")) for family in families()]


@pytest.mark.parametrize("name", TESTING)
def test_layer_index_covers_every_parameter(name):
    model = create(name, num_classes=2)
    params = init(model)["params"]
    layer_of, top = layer_index(model)
    layers = {n: layer_of(n) for n, _ in jm.named_leaves(params)}
    assert all(0 <= layer <= top for layer in layers.values())
    head = [n for n in layers if n.startswith("head/")]
    assert head and all(layers[n] == top for n in head), head
    assert min(layers.values()) == 0
    # Usable directly for layer-wise decay.
    tx = jm.layerwise_lr_decay(layer_of, top, 0.5)
    tx.update(params, tx.init(params))


def _batch(model):
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, 2, size=4))
    if input_kind(model) == "text":
        ids = jnp.asarray(rng.integers(1, min(model.vocab_size, 100), size=(4, 8)))
        return (ids, jnp.ones_like(ids)), labels
    # Images and audio: random inputs of the model's own shapes.
    return (jnp.asarray(rng.normal(size=model.example_inputs(4)[0].shape), jnp.float32),), labels


@pytest.mark.parametrize("name", TESTING)
def test_tiny_config_trains_end_to_end_with_a_frozen_stem(name):
    model = create(name, num_classes=2)  # applied in eval mode: no dropout
    variables = init(model)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    inputs, labels = _batch(model)
    frozen_first = "embed/.*" if name != "vgg-testing" else "encoder/block_0/.*"
    trainable = lambda tree: jm.trainable_mask(tree, frozen=frozen_first)
    tx = jm.freeze(optax.adam(1e-2), trainable=trainable)

    def loss_fn(p):
        logits = model.apply({"params": p, **state}, *inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, opt_state):
        loss, grads = jm.value_and_grad(loss_fn, trainable)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    trained = params
    for _ in range(15):
        trained, opt_state, loss = step(trained, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
    mask = trainable(params)
    for (n, before), (_, after), trains in zip(
        jm.named_leaves(params), jm.named_leaves(trained), jax.tree_util.tree_leaves(mask), strict=True
    ):
        assert trains or np.array_equal(before, after), n
