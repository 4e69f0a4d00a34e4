"""Several adapters on one base: switching, merging and unmerging, loading saved ones, per-method report rows."""

import jax
import numpy as np
import optax
import pytest

import jtl.masking as jm
from jtl import models
from jtl.adapters import (
    AdapterSet,
    DoRASpec,
    IA3Spec,
    LoRASpec,
    adapter_groups,
    add_adapters,
    save_adapters,
    trainable_patterns,
    with_adapters,
)

LORA_QV = LoRASpec(rank=4)
LORA_MLP = LoRASpec(targets=(r"encoder/block_\d+/mlp/fc1",), rank=2, alpha=4.0)
DORA = DoRASpec(rank=2)
IA3 = IA3Spec()


def _trained(params, spec, seed):
    """The spec's leaves as after training: every one moved, and its own head."""
    key = jax.random.PRNGKey(seed)
    leaves = set(spec.leaves)
    params = jm.map_with_names(
        lambda n, x: (
            x + 0.2 * jax.random.normal(jax.random.fold_in(key, len(n)), x.shape)
            if n.rsplit("/", 1)[-1] in leaves
            else x
        ),
        params,
    )
    head = jax.tree_util.tree_map(lambda x: x + jax.random.normal(key, x.shape), params["head"])
    return {**params, "head": head}


@pytest.fixture(scope="module")
def three():
    model = models.create("vit-testing", num_classes=3, head_zero_init=False)
    base = models.init(model)["params"]
    trained = {
        name: _trained(add_adapters(base, spec, jax.random.PRNGKey(i)), spec, seed=i)
        for i, (name, spec) in enumerate([("qv", LORA_QV), ("mlp", LORA_MLP), ("dora", DORA)])
    }
    specs = {"qv": LORA_QV, "mlp": LORA_MLP, "dora": DORA}
    adapters = AdapterSet(base)
    for name, params in trained.items():
        adapters = adapters.add(name, params, specs[name])
    return model, base, trained, specs, adapters


def test_switching_gives_each_adapters_own_outputs_exactly(three):
    model, base, trained, specs, adapters = three
    (x,) = model.example_inputs()
    outputs = {}
    for name in ["qv", "dora", "mlp", "qv"]:  # back and forth on one base
        out = adapters.model(model, name).apply({"params": adapters.params(name)}, x)
        np.testing.assert_array_equal(out, with_adapters(model, specs[name]).apply({"params": trained[name]}, x))
        outputs[name] = out
    assert not np.allclose(outputs["qv"], outputs["mlp"]) and not np.allclose(outputs["qv"], outputs["dora"])
    assert (
        adapters.params("qv")["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
        is base["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    )


@pytest.mark.parametrize("name", ["qv", "mlp", "dora"])
def test_merge_within_1e5_and_unmerge_returns_the_base_within_1e6(three, name):
    model, _, trained, _, adapters = three
    (x,) = model.example_inputs()
    merged = adapters.merge(name)
    unmerged_out = adapters.model(model, name).apply({"params": adapters.params(name)}, x)
    np.testing.assert_allclose(model.apply({"params": merged}, x), unmerged_out, atol=1e-5)
    back = adapters.unmerge(merged, name)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(adapters.params(name))
    for (n, a), (_, b) in zip(jm.named_leaves(back), jm.named_leaves(trained[name]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=n)


@pytest.mark.parametrize("spec", [LORA_QV, DORA, IA3], ids=lambda s: s.kind)
def test_saved_adapters_load_onto_an_existing_base(tmp_path, spec):
    model = models.create("vit-testing", num_classes=3, head_zero_init=False)
    base = models.init(model)["params"]
    params = _trained(add_adapters(base, spec, jax.random.PRNGKey(0)), spec, seed=3)
    save_adapters(tmp_path, with_adapters(model, spec), params, base="a base kept in memory")
    adapters = AdapterSet(base).load("saved", tmp_path)
    assert adapters.methods["saved"] == (spec,)
    for (n, a), (_, b) in zip(jm.named_leaves(adapters.params("saved")), jm.named_leaves(params), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=n)
    (x,) = model.example_inputs()
    np.testing.assert_array_equal(
        adapters.model(model, "saved").apply({"params": adapters.params("saved")}, x),
        with_adapters(model, spec).apply({"params": params}, x),
    )


def test_report_has_a_row_per_method_with_adam_state_twice_the_trainable_bytes():
    model = models.create("vit-testing", num_classes=3)
    params = add_adapters(models.init(model)["params"], LoRASpec(rank=4), jax.random.PRNGKey(0))
    trainable = list(trainable_patterns(LORA_QV))
    report = jm.report(params, trainable=trainable, optimizer=optax.adam(1e-3), leaf_groups=adapter_groups(LORA_QV))
    rows = {row.group: row for row in report.rows}
    lora = [x.size for n, x in jm.named_leaves(params) if "/lora_" in n]
    head = [x.size for n, x in jm.named_leaves(params) if n.startswith("head/")]
    assert rows["lora"].params == rows["lora"].trainable_params == sum(lora) == 2 * 2 * (16 * 4 + 4 * 16)
    assert rows["lora"].opt_state_bytes == 2 * 4 * sum(lora)  # adam's mu and nu in float32
    assert rows["encoder"].trainable_params == rows["encoder"].opt_state_bytes == 0
    assert report.total.trainable_params == sum(lora) + sum(head)
    # Beyond mu and nu per trainable parameter, only adam's step count (an int32).
    assert report.total.opt_state_bytes == 2 * 4 * report.total.trainable_params + 4
