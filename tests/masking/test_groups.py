import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtl.masking as jm
from tests.masking.models import NUM_BLOCKS, linen_setup

VIT_LIKE = {
    "embed": {
        "patch": {"kernel": jnp.ones((4, 4, 3, 8))},
        "pos_embedding": jnp.ones((1, 5, 8)),
        "cls": jnp.ones((1, 1, 8)),
    },
    "encoder": {
        "block_0": {
            "attn": {"query": {"kernel": jnp.ones((8, 8)), "bias": jnp.ones(8)}},
            "norm1": {"scale": jnp.ones(8)},
        },
        "block_1": {"mlp": {"fc1": {"kernel": jnp.ones((8, 16)), "bias": jnp.ones(16)}}},
    },
    "head": {"kernel": jnp.ones((8, 10)), "bias": jnp.ones(10)},
}


def _ones_like(tree):
    return jax.tree_util.tree_map(jnp.ones_like, tree)


def test_lr_multipliers_scale_the_update_of_each_group():
    tx = optax.chain(optax.sgd(1.0), jm.lr_multipliers([("embed/.*", 0.01), ("head/.*", 10.0)]))
    updates, _ = tx.update(_ones_like(VIT_LIKE), tx.init(VIT_LIKE), VIT_LIKE)
    named = dict(jm.named_leaves(updates))
    np.testing.assert_allclose(named["embed/cls"], -0.01, rtol=1e-6)
    np.testing.assert_allclose(named["head/kernel"], -10.0, rtol=1e-6)
    np.testing.assert_allclose(named["encoder/block_1/mlp/fc1/kernel"], -1.0)


def test_lr_multiplier_equals_a_smaller_learning_rate_for_adamw_with_decay():
    params, loss_fn, batch = linen_setup()
    grads = jax.grad(loss_fn)(params, batch)
    scaled = optax.chain(optax.adamw(1e-2, weight_decay=0.1), jm.lr_multipliers([("embed/.*", 0.1)]))
    per_group = optax.partition(
        {"low": optax.adamw(1e-3, weight_decay=0.1), "rest": optax.adamw(1e-2, weight_decay=0.1)},
        lambda t: jm.label_by_rules(t, [("embed/.*", "low")], default="rest"),
    )
    u1, _ = scaled.update(grads, scaled.init(params), params)
    u2, _ = per_group.update(grads, per_group.init(params), params)
    for a, b in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


def test_lr_multipliers_reject_a_rule_that_matches_nothing():
    tx = jm.lr_multipliers([("embedding/.*", 0.1)])
    with pytest.raises(jm.MaskingError, match=r"'embedding/.\*'"):
        tx.update(VIT_LIKE, tx.init(VIT_LIKE))


def test_layerwise_lr_decay_follows_the_formula():
    num_layers = 3  # embed = 0, block_0 = 1, block_1 = 2, head/norm = 3
    layer_of = jm.block_layer_index(num_blocks=2)
    tx = jm.layerwise_lr_decay(layer_of, num_layers=num_layers, decay=0.5)
    updates, _ = tx.update(_ones_like(VIT_LIKE), tx.init(VIT_LIKE))
    for name, u in jm.named_leaves(updates):
        expected = 0.5 ** (num_layers - layer_of(name))
        np.testing.assert_allclose(u, expected, err_msg=name)
    named = dict(jm.named_leaves(updates))
    assert float(named["embed/cls"].ravel()[0]) == 0.125
    assert float(named["encoder/block_0/norm1/scale"][0]) == 0.25
    assert float(named["head/bias"][0]) == 1.0


def test_layerwise_lr_decay_names_leaves_without_a_layer():
    tx = jm.layerwise_lr_decay(lambda name: None if name.startswith("head") else 0, num_layers=2, decay=0.9)
    with pytest.raises(jm.MaskingError, match=r"head/bias -> None"):
        tx.update(VIT_LIKE, tx.init(VIT_LIKE))


def test_weight_decay_mask_skips_biases_norms_and_embeddings():
    mask = dict(jm.named_leaves(jm.weight_decay_mask(VIT_LIKE)))
    assert mask == {
        "embed/cls": False,
        "embed/patch/kernel": True,
        "embed/pos_embedding": False,
        "encoder/block_0/attn/query/bias": False,
        "encoder/block_0/attn/query/kernel": True,
        "encoder/block_0/norm1/scale": False,
        "encoder/block_1/mlp/fc1/bias": False,
        "encoder/block_1/mlp/fc1/kernel": True,
        "head/bias": False,
        "head/kernel": True,
    }


def test_weight_decay_mask_understands_pytorch_style_names_and_extra_excludes():
    hf = {
        "embeddings.word_embeddings.weight": jnp.ones((10, 4)),
        "embeddings.position_embeddings.weight": jnp.ones((6, 4)),
        "embeddings.LayerNorm.weight": jnp.ones(4),
        "encoder.layer.0.attention.self.query.weight": jnp.ones((4, 4)),
        "classifier.weight": jnp.ones((2, 4)),
    }
    mask = jm.weight_decay_mask(hf, exclude=r"classifier\..*")
    assert mask == {
        "embeddings.word_embeddings.weight": False,
        "embeddings.position_embeddings.weight": False,
        "embeddings.LayerNorm.weight": False,
        "encoder.layer.0.attention.self.query.weight": True,
        "classifier.weight": False,
    }


def test_weight_decay_mask_works_as_adamw_mask():
    tx = optax.adamw(0.1, weight_decay=1.0, mask=jm.weight_decay_mask)
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, VIT_LIKE)
    updates, _ = tx.update(zero_grads, tx.init(VIT_LIKE), VIT_LIKE)
    named = dict(jm.named_leaves(updates))
    assert not np.any(named["head/bias"]) and not np.any(named["embed/pos_embedding"])
    np.testing.assert_allclose(named["head/kernel"], -0.1)


def test_gradual_unfreezing_schedule_and_validation():
    schedule = jm.gradual_unfreezing(["head/.*", ["block_2/.*", "norm_2/.*"], "block_1/.*"], every=3)
    assert schedule.starts == (0, 3, 6)
    assert [schedule.stage(s) for s in range(8)] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert schedule.trainable_patterns(4) == ("head/.*", "block_2/.*", "norm_2/.*")
    with pytest.raises(jm.MaskingError, match=r"increasing, begin at 0"):
        jm.gradual_unfreezing(["a", "b"], starts=[5, 10])
    with pytest.raises(jm.MaskingError, match=r"exactly one"):
        jm.gradual_unfreezing(["a"])


def test_gradual_unfreezing_training_loop():
    """Still-frozen blocks stay bit-identical, get no gradient computed, and unfreeze on schedule."""
    params, loss_fn, batch = linen_setup()
    schedule = jm.gradual_unfreezing(["head/.*", ["block_2/.*", "norm_2/.*"], ["block_1/.*", "norm_1/.*"]], every=2)
    base = optax.chain(
        optax.adam(1e-2), jm.layerwise_lr_decay(jm.block_layer_index(NUM_BLOCKS), NUM_BLOCKS + 1, 1 / 2.6)
    )
    initial = params
    opt_state, stage, step_fn, dots = None, None, None, {}
    for step in range(6):
        if schedule.stage(step) != stage:
            stage = schedule.stage(step)
            patterns = schedule.trainable_patterns(step)
            tx = jm.freeze(base, trainable=patterns)
            fresh = tx.init(params)
            opt_state = fresh if opt_state is None else jm.carry_over_state(opt_state, fresh)
            grad_fn = jm.value_and_grad(loss_fn, patterns)

            def train_step(params, opt_state, tx=tx, grad_fn=grad_fn):
                _, grads = grad_fn(params, batch)
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state

            step_fn = jax.jit(train_step)
            dots[stage] = str(jax.make_jaxpr(grad_fn)(params, batch)).count("dot_general")
        params, opt_state = step_fn(params, opt_state)
        changed = {
            name.split("/")[0]
            for (name, a), (_, b) in zip(jm.named_leaves(initial), jm.named_leaves(params), strict=True)
            if not np.array_equal(a, b)
        }
        expected = {
            0: {"head"},
            1: {"head", "block_2", "norm_2"},
            2: {"head", "block_2", "norm_2", "block_1", "norm_1"},
        }
        assert changed == expected[stage], (step, changed)
    # Each unfrozen block adds its weight gradient and the input gradient of the block above.
    assert dots[0] < dots[1] < dots[2]
