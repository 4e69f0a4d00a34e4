import json

import jax
import jax.numpy as jnp
import optax

import jtl.masking as jm
from tests.masking.models import LinenNet

PARAMS = {
    "embed": {"kernel": jnp.ones((8, 16))},
    "encoder": {"block_0": {"kernel": jnp.ones((16, 16)), "bias": jnp.ones(16)}},
    "head": {"kernel": jnp.ones((16, 3), dtype=jnp.bfloat16), "bias": jnp.ones(3)},
}


def test_counts_bytes_and_adamw_state_per_group():
    r = jm.report(PARAMS, trainable=["head/.*", "encoder/block_0/bias"], optimizer=optax.adamw(1e-3))
    rows = {row.group: row for row in r.rows}
    assert rows["embed"] == jm.GroupRow("embed", 128, 0, 512, 0)
    assert rows["encoder"] == jm.GroupRow("encoder", 272, 16, 1088, 2 * 16 * 4)
    # Adam's moments take the params' dtypes: 48 bf16 and 3 f32 elements, twice.
    assert rows["head"] == jm.GroupRow("head", 51, 51, 48 * 2 + 12, 2 * (48 * 2 + 12))
    assert r.total.params == 128 + 272 + 51 and r.total.trainable_params == 67
    assert r.total.opt_state_bytes == sum(row.opt_state_bytes for row in r.rows)
    assert abs(rows["encoder"].trainable_share - 16 / 272) < 1e-12


def test_total_optimizer_state_equals_the_real_state():
    r = jm.report(PARAMS, frozen="embed/.*", optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, 0.9)))
    real = jm.freeze(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, 0.9)), frozen="embed/.*").init(PARAMS)
    assert r.total.opt_state_bytes == sum(x.nbytes for x in jax.tree_util.tree_leaves(real))


def test_report_on_shapes_allocates_nothing_and_groups_by_rules():
    shapes = jax.eval_shape(LinenNet().init, jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"]
    r = jm.report(
        shapes,
        trainable="head/.*",
        groups=[("embed/.*", "embedding"), ("(block|norm)_.*", "blocks"), ("head/.*", "head")],
        optimizer=optax.adam(1e-3),
    )
    assert [row.group for row in r.rows] == ["blocks", "embedding", "head", "(optimizer scalars)"]
    head = next(row for row in r.rows if row.group == "head")
    assert head.params == 16 * 3 + 3 and head.opt_state_bytes == 2 * 4 * (16 * 3 + 3)


def test_report_prints_a_table_and_serialises():
    r = jm.report(PARAMS, trainable="head/.*", optimizer=optax.adam(1e-3))
    text = str(r)
    assert text.splitlines()[0].split() == [
        "group",
        "params",
        "%",
        "of",
        "all",
        "trainable",
        "bytes",
        "opt",
        "state",
    ]
    assert "total" in text.splitlines()[-1]
    data = json.loads(json.dumps(r.to_dict()))
    assert data["total"]["params"] == 451 and data["rows"][0]["group"] == "embed"


def test_everything_trains_when_no_mask_is_given():
    r = jm.report(PARAMS, depth=2)
    assert {row.group for row in r.rows} == {"embed/kernel", "encoder/block_0", "head/kernel", "head/bias"}
    assert r.total.trainable_share == 1.0
