"""Property tests over random pytrees and random rule sets."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jtl.masking as jm

KEYS = st.sampled_from(["embed", "encoder", "block_0", "block_1", "head", "kernel", "bias", "scale"])
SHAPES = st.sampled_from([(), (3,), (2, 3), (1, 2, 2)])


def _leaf(shape_and_seed):
    shape, seed = shape_and_seed
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype=jnp.float32)


LEAVES = st.tuples(SHAPES, st.integers(0, 10_000)).map(_leaf)
TREES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.dictionaries(KEYS, children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=2).map(tuple),
    ),
    max_leaves=10,
)
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _names(tree):
    return [n for n, _ in jm.named_leaves(tree)]


@st.composite
def tree_and_rules(draw):
    tree = draw(TREES)
    names = _names(tree)
    rules = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(names))
        parts = name.split("/")
        prefix = "/".join(parts[: draw(st.integers(0, len(parts)))])
        pattern = re.escape(name) if prefix == name else (re.escape(prefix) + "/.*" if prefix else ".*")
        rules.append((pattern, draw(st.sampled_from(["a", "b", "c"]))))
    return tree, rules


@st.composite
def tree_and_mask(draw):
    tree = draw(TREES)
    flags = draw(st.lists(st.booleans(), min_size=len(_names(tree)), max_size=len(_names(tree))))
    return tree, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), flags)


@PROPERTY
@given(tree_and_rules(), st.integers(0, 10_000))
def test_labels_are_a_pure_function_of_names(case, seed):
    tree, rules = case
    labels = jm.label_by_rules(tree, rules, default="default", allow_unused=True)

    def first_match(name):
        return next((label for pattern, label in rules if re.fullmatch(pattern, name)), "default")

    assert [label for _, label in jm.named_leaves(labels)] == [first_match(n) for n in _names(tree)]
    # Other values and shapes under the same names give the same labels.
    rng = np.random.default_rng(seed)
    other = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=rng.integers(1, 4, size=2))), tree)
    assert jm.label_by_rules(other, rules, default="default", allow_unused=True) == labels


@PROPERTY
@given(tree_and_mask())
def test_split_then_merge_is_the_identity(case):
    tree, mask = case
    trainable, frozen = jm.split(tree, mask)
    merged = jm.merge(trainable, frozen)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(tree)
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(tree), strict=True))
    assert len(jax.tree_util.tree_leaves(trainable)) == sum(jax.tree_util.tree_leaves(mask))


def _coupled_loss(tree):
    # Every leaf's gradient depends on every other leaf, so dropping a frozen leaf would show.
    sums = [jnp.sum(jnp.tanh(x)) for x in jax.tree_util.tree_leaves(tree)]
    total = sum((i + 1.0) * s for i, s in enumerate(sums))
    return total**2 + jnp.sin(total)


@PROPERTY
@given(tree_and_mask())
def test_trainable_only_gradient_equals_the_trainable_part_of_the_full_gradient(case):
    tree, mask = case
    value, grads = jm.value_and_grad(_coupled_loss, mask)(tree)
    full_value, full = jax.value_and_grad(_coupled_loss)(tree)
    np.testing.assert_allclose(value, full_value, rtol=1e-6)
    for g, f, m in zip(
        jax.tree_util.tree_leaves(grads),
        jax.tree_util.tree_leaves(full),
        jax.tree_util.tree_leaves(mask),
        strict=True,
    ):
        if m:
            np.testing.assert_allclose(g, f, rtol=1e-5, atol=1e-6)
        else:
            assert g.shape == f.shape and not np.any(g)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree_and_mask(), st.integers(1, 4))
def test_frozen_leaves_bit_identical_after_jitted_adamw_and_hold_no_moments(case, steps):
    tree, mask = case
    tx = jm.freeze(optax.adamw(0.1, weight_decay=0.5), trainable=mask)
    state = tx.init(tree)

    @jax.jit
    def step(params, state):
        grads = jax.grad(_coupled_loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = tree
    for _ in range(steps):
        params, state = step(params, state)
    for before, after, m in zip(
        jax.tree_util.tree_leaves(tree),
        jax.tree_util.tree_leaves(params),
        jax.tree_util.tree_leaves(mask),
        strict=True,
    ):
        if not m:
            assert np.array_equal(before, after)
    trainable_sizes = [np.size(x) for x, m in zip(*map(jax.tree_util.tree_leaves, (tree, mask)), strict=True) if m]
    state_sizes = sorted(np.size(x) for x in jax.tree_util.tree_leaves(state))
    assert state_sizes == sorted([1] + trainable_sizes * 2)  # mu and nu per trainable leaf, one count
