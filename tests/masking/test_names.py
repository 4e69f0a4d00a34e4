from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jtl.masking as jm


class Pair(NamedTuple):
    first: jax.Array
    second: jax.Array


def test_names_of_nested_containers():
    tree = {"a": [jnp.ones(1), (jnp.ones(2), Pair(jnp.ones(3), jnp.ones(4)))], "b": {"c": jnp.ones(5)}}
    names = [n for n, _ in jm.named_leaves(tree)]
    assert names == ["a/0", "a/1/0", "a/1/1/first", "a/1/1/second", "b/c"]
    assert jax.tree_util.tree_leaves(jm.leaf_names(tree)) == names


def test_nnx_state_names_drop_the_variable_level():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.encoder = nnx.Linear(3, 4, rngs=rngs)
            self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])

    _, state = nnx.split(Model(nnx.Rngs(0)))
    assert [n for n, _ in jm.named_leaves(state)] == [
        "blocks/0/bias",
        "blocks/0/kernel",
        "blocks/1/bias",
        "blocks/1/kernel",
        "encoder/bias",
        "encoder/kernel",
    ]
    names = jm.leaf_names(state)
    assert jax.tree_util.tree_structure(names) == jax.tree_util.tree_structure(state)


def test_equinox_names_use_attributes():
    mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0))
    names = [n for n, _ in jm.named_leaves(eqx.filter(mlp, eqx.is_array))]
    assert names == ["layers/0/weight", "layers/0/bias", "layers/1/weight", "layers/1/bias"]


def test_map_with_names_passes_matching_leaves_of_other_trees():
    a = {"x": jnp.ones(2), "y": jnp.ones(3)}
    b = {"x": jnp.full(2, 2.0), "y": jnp.full(3, 3.0)}
    out = jm.map_with_names(lambda name, u, v: (name, float((u + v).sum())), a, b)
    assert out == {"x": ("x", 6.0), "y": ("y", 12.0)}


def test_map_with_names_names_the_missing_leaf():
    with pytest.raises(jm.MaskingError, match=r"missing leaves \['y'\]"):
        jm.map_with_names(lambda n, u, v: u, {"x": 1.0, "y": 2.0}, {"x": 1.0})


def test_colliding_names_are_an_error():
    with pytest.raises(jm.MaskingError, match=r"not unique.*'a/b'"):
        jm.leaf_names({"a/b": jnp.ones(1), "a": {"b": jnp.ones(1)}})
