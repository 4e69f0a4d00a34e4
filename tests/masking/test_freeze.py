import re

import equinox as eqx
import jax
import numpy as np
import optax
import pytest

import jtl.masking as jm
from tests.masking.models import NUM_BLOCKS, SETUPS, linen_setup

HEAD = "head/.*"


def _arrays(tree):
    """The differentiable leaves of a tree (Equinox modules hold functions too)."""
    return eqx.filter(tree, eqx.is_inexact_array)


def _train(params, loss_fn, batch, tx, steps, grad_fn):
    opt_state = tx.init(_arrays(params))

    @eqx.filter_jit
    def step(params, opt_state):
        _, grads = grad_fn(loss_fn)(params, batch)
        updates, opt_state = tx.update(_arrays(grads), opt_state, _arrays(params))
        return eqx.apply_updates(params, updates), opt_state

    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params, opt_state


@pytest.mark.parametrize("style", sorted(SETUPS))
@pytest.mark.parametrize("skip_frozen_grads", [False, True])
def test_frozen_leaves_bit_identical_after_jitted_adamw(style, skip_frozen_grads):
    params, loss_fn, batch = SETUPS[style]()
    tx = jm.freeze(optax.adamw(1e-2, weight_decay=0.1), trainable=HEAD)
    grad_fn = (lambda f: jm.value_and_grad(f, HEAD)) if skip_frozen_grads else eqx.filter_value_and_grad
    trained, _ = _train(params, loss_fn, batch, tx, steps=5, grad_fn=grad_fn)

    for (name, before), (_, after) in zip(
        jm.named_leaves(_arrays(params)), jm.named_leaves(_arrays(trained)), strict=True
    ):
        if name.startswith("head/"):
            assert not np.array_equal(before, after), name
        else:
            assert np.array_equal(before, after), name  # bitwise, not approximately


@pytest.mark.parametrize("style", sorted(SETUPS))
def test_optimizer_state_has_no_moments_for_frozen_leaves(style):
    params, _, _ = SETUPS[style]()
    params = _arrays(params)
    state = jm.freeze(optax.adam(1e-3), trainable=HEAD).init(params)
    head_sizes = sorted(np.size(x) for n, x in jm.named_leaves(params) if n.startswith("head/"))
    # Adam keeps mu and nu per trainable leaf and one step count: nothing sized like a frozen leaf.
    state_sizes = sorted(np.size(x) for x in jax.tree_util.tree_leaves(state))
    assert state_sizes == sorted([1] + head_sizes * 2)
    assert jax.tree_util.tree_leaves(state.inner_states[jm.FROZEN]) == []


@pytest.mark.parametrize("style", sorted(SETUPS))
def test_trainable_only_gradients_equal_the_trainable_part_of_the_full_gradient(style):
    params, loss_fn, batch = SETUPS[style]()
    trainable = ["head/.*", "(blocks|block_)[/_]?2.*"]
    mask = jm.trainable_mask(params, trainable=trainable, allow_unused=True)
    value, grads = jm.value_and_grad(loss_fn, mask)(params, batch)
    full_value, full_grads = eqx.filter_value_and_grad(loss_fn)(params, batch)
    assert value == pytest.approx(float(full_value), abs=1e-7)
    trains = dict(jm.named_leaves(mask))
    trained_any = False
    for (name, g), (_, full) in zip(jm.named_leaves(_arrays(grads)), jm.named_leaves(_arrays(full_grads)), strict=True):
        if trains[name]:
            trained_any = True
            np.testing.assert_allclose(g, full, rtol=1e-6, atol=1e-7, err_msg=name)
        else:
            assert not np.any(g), name
    assert trained_any


def test_has_aux_is_passed_through():
    params, loss_fn, batch = linen_setup()
    (value, aux), _ = jm.value_and_grad(lambda p, b: (loss_fn(p, b), {"n": 3}), HEAD, has_aux=True)(params, batch)
    assert aux == {"n": 3} and np.isfinite(value)


def test_split_then_merge_is_identity_and_parts_are_disjoint():
    params, _, _ = linen_setup()
    trainable, frozen = jm.split(params, ["head/.*", "block_1/.*"])
    assert {n for n, _ in jm.named_leaves(trainable)} == {
        "head/bias",
        "head/kernel",
        "block_1/bias",
        "block_1/kernel",
    }
    assert not {n for n, _ in jm.named_leaves(trainable)} & {n for n, _ in jm.named_leaves(frozen)}
    merged = jm.merge(trainable, frozen)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(params), strict=True):
        assert a is b


def _count_dots(text):
    return len(re.findall(r"\bdot_general\b", text))


def test_frozen_backbone_has_no_backward_pass_in_the_jaxpr():
    params, loss_fn, batch = linen_setup()
    forward = _count_dots(str(jax.make_jaxpr(loss_fn)(params, batch)))
    full = _count_dots(str(jax.make_jaxpr(jax.value_and_grad(loss_fn))(params, batch)))
    head_only = _count_dots(str(jax.make_jaxpr(jm.value_and_grad(loss_fn, HEAD))(params, batch)))
    assert forward == NUM_BLOCKS + 2
    # The only extra matmul is the head's weight gradient: nothing below the head is differentiated.
    assert head_only == forward + 1
    # The full gradient transposes every matmul (weight and input gradients).
    assert full == forward + 2 * (NUM_BLOCKS + 2) - 1  # minus the input gradient of the first layer


def test_compiled_step_computes_fewer_matmuls_than_the_anchor_recipe():
    """The anchors' recipe: full gradient, clip over the whole tree, then zero the frozen updates."""
    params, loss_fn, batch = linen_setup()
    tx = optax.chain(optax.clip_by_global_norm(1.0), jm.freeze(optax.adamw(1e-3), trainable=HEAD))
    opt_state = tx.init(params)

    def make_step(grad_fn):
        def step(params, opt_state):
            loss, grads = grad_fn(params, batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return jax.jit(step)

    def hlo_dots(grad_fn):
        text = make_step(grad_fn).lower(params, opt_state).compile().as_text()
        return len(re.findall(r" dot\(", text))

    anchor = hlo_dots(jax.value_and_grad(loss_fn))
    ours = hlo_dots(jm.value_and_grad(loss_fn, HEAD))
    assert ours == NUM_BLOCKS + 3  # forward matmuls + the head's weight gradient
    assert anchor >= ours + 2 * NUM_BLOCKS


def test_freeze_accepts_frozen_patterns_and_callables():
    params, loss_fn, batch = linen_setup()
    by_frozen = jm.freeze(optax.sgd(0.1), frozen=["embed/.*", "block_.*", "norm_.*"])
    by_callable = jm.freeze(optax.sgd(0.1), trainable=lambda t: jm.select(t, HEAD))
    grads = jax.grad(loss_fn)(params, batch)
    u1, _ = by_frozen.update(grads, by_frozen.init(params), params)
    u2, _ = by_callable.update(grads, by_callable.init(params), params)
    for a, b in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_freeze_with_a_typo_fails_before_training():
    params, _, _ = linen_setup()
    with pytest.raises(jm.MaskingError, match=r"'haed/.\*'"):
        jm.freeze(optax.sgd(0.1), trainable="haed/.*").init(params)


def test_carry_over_state_keeps_moments_of_leaves_already_training():
    params, loss_fn, batch = linen_setup()
    stage0 = jm.freeze(optax.adam(1e-2), trainable=HEAD)
    _, state0 = _train(params, loss_fn, batch, stage0, steps=2, grad_fn=lambda f: jm.value_and_grad(f, HEAD))
    stage1 = jm.freeze(optax.adam(1e-2), trainable=[HEAD, "block_2/.*"])
    state1 = jm.carry_over_state(state0, stage1.init(params))
    adam0 = state0.inner_states[jm.TRAINABLE].inner_state[0]
    adam1 = state1.inner_states[jm.TRAINABLE].inner_state[0]
    np.testing.assert_array_equal(adam1.mu["head"]["kernel"], adam0.mu["head"]["kernel"])
    assert int(adam1.count) == 2
    assert not np.any(adam1.mu["block_2"]["kernel"])
