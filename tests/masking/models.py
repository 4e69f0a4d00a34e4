"""Tiny models in the three pytree styles jtl.masking must serve: linen dicts, nnx.State, Equinox."""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

NUM_BLOCKS = 3
WIDTH = 16
IN_DIM = 8
NUM_CLASSES = 3


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(WIDTH, name="embed")(x)
        for i in range(NUM_BLOCKS):
            x = x + nn.gelu(nn.Dense(WIDTH, name=f"block_{i}")(nn.LayerNorm(name=f"norm_{i}")(x)))
        return nn.Dense(NUM_CLASSES, name="head")(x)


def linen_setup(seed=0):
    """Returns (params, loss_fn, batch) for the linen model."""
    model = LinenNet()
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (8, IN_DIM))
    y = jnp.arange(8) % NUM_CLASSES
    params = model.init(jax.random.PRNGKey(seed), x)["params"]

    def loss_fn(p, batch):
        logits = model.apply({"params": p}, batch[0])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch[1][:, None], axis=1))

    return params, loss_fn, (x, y)


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Linear(IN_DIM, WIDTH, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(NUM_BLOCKS)])
        self.head = nnx.Linear(WIDTH, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = x + nnx.gelu(block(x))
        return self.head(x)


def nnx_setup(seed=0):
    """Returns (params as nnx.State, loss_fn, batch); loss_fn merges the graphdef back."""
    graphdef, params = nnx.split(NnxNet(nnx.Rngs(seed)), nnx.Param)
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (8, IN_DIM))
    y = jnp.arange(8) % NUM_CLASSES

    def loss_fn(p, batch):
        logits = nnx.merge(graphdef, p)(batch[0])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch[1][:, None], axis=1))

    return params, loss_fn, (x, y)


class EqxNet(eqx.Module):
    embed: eqx.nn.Linear
    blocks: list
    head: eqx.nn.Linear
    activation: object  # a non-array leaf, as Equinox models have

    def __init__(self, key):
        keys = jax.random.split(key, NUM_BLOCKS + 2)
        self.embed = eqx.nn.Linear(IN_DIM, WIDTH, key=keys[0])
        self.blocks = [eqx.nn.Linear(WIDTH, WIDTH, key=k) for k in keys[1:-1]]
        self.head = eqx.nn.Linear(WIDTH, NUM_CLASSES, key=keys[-1])
        self.activation = jax.nn.gelu

    def __call__(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = x + self.activation(block(x))
        return self.head(x)


def eqx_setup(seed=0):
    """Returns (the Equinox model itself as the params tree, loss_fn, batch)."""
    model = EqxNet(jax.random.PRNGKey(seed))
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (8, IN_DIM))
    y = jnp.arange(8) % NUM_CLASSES

    def loss_fn(m, batch):
        logits = jax.vmap(m)(batch[0])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch[1][:, None], axis=1))

    return model, loss_fn, (x, y)


SETUPS = {"linen": linen_setup, "nnx": nnx_setup, "equinox": eqx_setup}
