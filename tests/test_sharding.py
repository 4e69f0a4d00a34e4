"""jtl.sharding: rules to specs, the optimizer state following its parameters, shard-by-shard placement."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jtl import models, parallel, step
from jtl.sharding import Plan, ShardingError, default_rules, partition_spec

SIZES = {"data": 4, "model": 2}


@pytest.mark.parametrize(
    ("shape", "strategy", "expected"),
    [
        ((1024, 4096), "fsdp", (None, "data")),  # the largest dimension
        ((4096, 1024), "fsdp", ("data", None)),
        ((64, 64), "fsdp", ("data", None)),  # the first of equals
        ((6, 8), "fsdp", (None, "data")),  # 4 does not divide 6
        ((6, 10), "fsdp", (None, None)),  # nor 10: whole
        ((8, 16), "model:0+fsdp", ("model", "data")),
        ((8, 16), "model:-1+fsdp", ("data", "model")),
        ((7, 16), "model:0", (None, None)),  # 2 does not divide 7
        ((8, 16), "replicate", (None, None)),
        ((), "fsdp", ()),
    ],
)
def test_partition_spec(shape, strategy, expected):
    assert tuple(partition_spec(shape, strategy, SIZES)) == expected


def test_a_model_axis_of_one_device_leaves_the_dimension_to_fsdp():
    assert tuple(partition_spec((16,), "model:0+fsdp", {"data": 4, "model": 1})) == ("data",)


def test_small_leaves_stay_replicated():
    assert tuple(partition_spec((16, 16), "model:0+fsdp", SIZES, min_size=257)) == (None, None)
    assert tuple(partition_spec((16, 16), "model:0+fsdp", SIZES, min_size=256)) == ("model", "data")


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("shard", r"unknown part 'shard'"),
        ("model:x", r"unknown part 'model:x'"),
        ("model:2", r"dimension 2 of"),
        ("model:0+model:1", r"the model axis can split one dimension"),
    ],
)
def test_bad_strategies_name_the_rule(strategy, message):
    with pytest.raises(ShardingError, match=r"the rule for 'w': strategy .*" + message):
        partition_spec((4, 4), strategy, SIZES, where="the rule for 'w': ")


def test_default_rules_split_every_transformer_kernel_megatron_style():
    model = models.create("bert-testing", num_classes=2)
    params = jax.eval_shape(lambda: models.init(model))["params"]
    plan = Plan(parallel.make_mesh(model=2), [params], default_rules(fsdp=True, tensor_parallel=True))
    specs = plan.specs(params)["encoder"]["block_0"]
    assert tuple(specs["attn"]["value"]["kernel"]) == ("data", "model")
    assert tuple(specs["attn"]["value"]["bias"]) == ("model",)
    assert tuple(specs["attn"]["out"]["kernel"]) == ("model", "data")
    assert tuple(specs["mlp"]["fc2"]["kernel"]) == ("model", "data")
    assert tuple(plan.specs(params)["embed"]["word"]["embedding"]) == ("data", None)  # vocab 100 x width 16


def test_first_match_wins_and_unmatched_is_replicated_or_an_error():
    params = {"encoder": {"w": np.zeros((8, 8))}, "head": {"w": np.zeros((8, 8))}}
    mesh = parallel.make_mesh()
    plan = Plan(mesh, [params], [("head/.*", "replicate"), (".*/w", "fsdp")])
    assert plan.specs(params) == {"encoder": {"w": P("data", None)}, "head": {"w": P(None, None)}}
    assert Plan(mesh, [params], [("encoder/.*", "fsdp")]).specs(params)["head"]["w"] == P(None, None)
    with pytest.raises(ShardingError, match=r"no rule covers these leaves: \['head/w'\]"):
        Plan(mesh, [params], [("encoder/.*", "fsdp")], unmatched="error")
    typo = r"rules give no parameter its sharding .*\[\('encoder/fc1/kernal', 'fsdp'\)"
    with pytest.raises(ShardingError, match=typo):
        Plan(mesh, [params], [("encoder/fc1/kernal", "fsdp"), (".*", "fsdp")])
    lenient = Plan(mesh, [params], [("encoder/fc1/kernal", "fsdp")], allow_unused=True)
    assert lenient.specs(params)["head"]["w"] == P(None, None)


def test_the_optimizer_state_follows_its_parameters():
    params = {"w": np.ones((8, 4), np.float32), "frozen": np.ones((8, 4), np.float32)}
    tx = step.freeze(optax.adamw(1e-3), ["w"])
    state = step.init_state({"params": params}, tx)
    plan = Plan(parallel.make_mesh(), [params], [(".*", "fsdp")])
    specs = plan.specs(state)
    adam = specs.opt_state.inner_states["trainable"].inner_state[0]
    assert adam.mu["model"]["w"] == adam.nu["model"]["w"] == specs.params["w"] == P("data", None)
    assert adam.count == specs.step == specs.rng == P()


def test_put_sends_each_device_only_its_slice():
    host = np.arange(32.0).reshape(8, 4)
    mesh = parallel.make_mesh(model=2)
    placed = Plan(mesh, [{"w": host}], [(".*", "model:-1+fsdp")]).put({"w": host})["w"]
    assert tuple(placed.sharding.spec) == ("data", "model")
    for shard in placed.addressable_shards:
        assert shard.data.shape == (4, 2)
        np.testing.assert_array_equal(shard.data, host[shard.index])
    np.testing.assert_array_equal(parallel.to_host(placed), host)


def test_bytes_per_device_divide_by_the_devices():
    params = {"w": np.zeros((64, 32), np.float32), "b": np.zeros(32, np.float32)}
    mesh = parallel.make_mesh()
    fsdp = Plan(mesh, [params], [(".*", "fsdp")], min_size=64)
    assert Plan(mesh, [params], [(".*", "replicate")]).bytes_per_device(params) == (64 * 32 + 32) * 4
    assert fsdp.bytes_per_device(params) == (64 * 32 // 4 + 32) * 4  # the bias is below min_size
