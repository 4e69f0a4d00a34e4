import jax
import numpy as np
import optax
import pytest

import jtl.masking as jm
from jtl import models
from jtl.adapters import (
    BITFIT_TRAINABLE,
    LORA_TRAINABLE,
    LoRASpec,
    add_adapters,
    load_adapters,
    merge_adapters,
    save_adapters,
    with_lora,
)
from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step
from jtl.weights import WeightLoadError, save_pretrained

SPEC = LoRASpec(targets=(r"encoder/block_\d+/attn/(query|value)", r"encoder/block_\d+/mlp/fc1"), rank=4)


def _perturbed_adapters(params, seed=1):
    """Adapters as after some training (lora_b is zero at initialisation)."""
    key = jax.random.PRNGKey(seed)
    return jm.map_with_names(
        lambda name, x: (
            x + 0.2 * jax.random.normal(jax.random.fold_in(key, hash(name) % 1000), x.shape)
            if name.endswith("lora_b")
            else x
        ),
        params,
    )


@pytest.fixture(params=["vit-testing", "bert-testing"])
def adapted(request):
    model = models.create(request.param, num_classes=3, head_zero_init=False)
    variables = models.init(model)
    params = add_adapters(variables["params"], SPEC, jax.random.PRNGKey(0))
    return model, variables, params


def test_adapters_start_as_the_identity_and_merge_within_1e5(adapted):
    model, variables, params = adapted
    lora = with_lora(model, SPEC)
    inputs = model.example_inputs()
    np.testing.assert_array_equal(lora.apply({"params": params}, *inputs), model.apply(variables, *inputs))
    trained = _perturbed_adapters(params)
    unmerged = lora.apply({"params": trained}, *inputs)
    merged = model.apply({"params": merge_adapters(trained, SPEC)}, *inputs)
    assert not np.allclose(unmerged, model.apply(variables, *inputs), atol=1e-3)
    np.testing.assert_allclose(merged, unmerged, atol=1e-5)


def test_rslora_scale_and_dropout():
    assert LoRASpec(rank=16, alpha=8.0).scale == 0.5
    assert LoRASpec(rank=16, alpha=8.0, rslora=True).scale == 2.0
    model = models.create("vit-testing", num_classes=3, head_zero_init=False, dropout_rate=0.0)
    spec = SPEC._replace(dropout=0.5)
    params = _perturbed_adapters(add_adapters(models.init(model)["params"], spec, jax.random.PRNGKey(0)))
    lora = with_lora(model, spec)
    (x,) = model.example_inputs()
    evaluation = lora.apply({"params": params}, x)
    np.testing.assert_array_equal(evaluation, lora.apply({"params": params}, x))
    trained = lora.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    assert not np.allclose(trained, evaluation)


def test_only_adapters_and_head_change_in_a_train_step():
    model = models.create("vit-testing", num_classes=3)
    params = add_adapters(models.init(model)["params"], SPEC, jax.random.PRNGKey(0))
    lora = with_lora(model, SPEC)
    trainable = list(LORA_TRAINABLE)
    tx = freeze(optax.adam(1e-2), trainable)
    step = jax.jit(make_train_step(lora, Classification(3), tx, trainable))
    state = init_state({"params": params}, tx)
    rng = np.random.default_rng(0)
    size = model.image_size
    batch = {"image": rng.normal(size=(8, size, size, 3)).astype(np.float32), "label": rng.integers(0, 3, 8)}
    for _ in range(3):  # the zero-initialised head moves first, then lora_b, then lora_a
        state, _ = step(state, batch)
    for (name, before), (_, after) in zip(jm.named_leaves(params), jm.named_leaves(state.params), strict=True):
        if "lora_" in name or name.startswith("head/"):
            assert not np.array_equal(before, after), name
        else:
            assert np.array_equal(before, after), name


def test_vit_b_lora_r8_trains_under_one_percent():
    model = models.create("vit-b16", num_classes=10)
    spec = LoRASpec(rank=8)

    def adapted():
        return add_adapters(models.init(model)["params"], spec, jax.random.PRNGKey(0))

    params = jax.eval_shape(adapted)
    report = jm.report(params, trainable=list(LORA_TRAINABLE))
    total = sum(x.size for x in jax.tree_util.tree_leaves(params))
    trainable = sum(
        x.size
        for x, t in zip(
            jax.tree_util.tree_leaves(params),
            jax.tree_util.tree_leaves(jm.select(params, list(LORA_TRAINABLE))),
            strict=False,
        )
        if t
    )
    # 12 blocks x (query, value) x (768 x 8 + 8 x 768), plus the 768 x 10 head.
    assert trainable == 12 * 2 * 2 * 768 * 8 + 768 * 10 + 10
    assert trainable / total < 0.01
    assert f"{trainable:,}" in str(report)


def test_bitfit_preset_selects_biases_and_head():
    params = models.init(models.create("vit-testing", num_classes=3))["params"]
    chosen = [
        n
        for (n, _), t in zip(
            jm.named_leaves(params),
            jax.tree_util.tree_leaves(jm.select(params, list(BITFIT_TRAINABLE))),
            strict=True,
        )
        if t
    ]
    assert chosen and all(n.endswith("/bias") or n.startswith("head/") for n in chosen)
    assert "encoder/block_0/attn/query/bias" in chosen and "head/kernel" in chosen


def test_target_matching_nothing_is_an_error():
    params = models.init(models.create("vit-testing", num_classes=3))["params"]
    with pytest.raises(jm.MaskingError, match=r"attn/qkv.*match no 2-D Dense or 4-D Conv kernel.*encoder/block_0"):
        add_adapters(params, LoRASpec(targets=("encoder/.*/attn/qkv",)), jax.random.PRNGKey(0))


def test_save_and_load_adapters_round_trip(tmp_path):
    model = models.create("vit-testing", num_classes=3, head_zero_init=False)
    variables = models.init(model)
    save_pretrained(tmp_path / "base", model, variables)
    lora = with_lora(model, SPEC)
    params = _perturbed_adapters(add_adapters(variables["params"], SPEC, jax.random.PRNGKey(0)))
    params = {**params, "head": jax.tree_util.tree_map(lambda x: x + 1.0, params["head"])}
    # The head is saved even when the patterns leave it out.
    save_adapters(tmp_path / "adapters", lora, params, base=str(tmp_path / "base"), trainable=(".*/lora_.",))
    with np.load(tmp_path / "adapters" / "adapters.npz") as saved:
        assert sorted(saved.files) == sorted(n for n, _ in jm.named_leaves(params) if "lora_" in n or "head/" in n)
    loaded_model, loaded = load_adapters(tmp_path / "adapters")
    assert loaded_model.adapters == (SPEC,)
    (x,) = model.example_inputs()
    np.testing.assert_array_equal(loaded_model.apply(loaded, x), lora.apply({"params": params}, x))


def test_adapters_for_another_base_are_a_clear_error(tmp_path):
    small = models.create("vit-testing", num_classes=3)
    wide = models.create("vit-testing", num_classes=3, hidden_size=32)
    save_pretrained(tmp_path / "wide", wide, models.init(wide))
    params = add_adapters(models.init(small)["params"], SPEC, jax.random.PRNGKey(0))
    save_adapters(tmp_path / "adapters", with_lora(small, SPEC), params, base=str(tmp_path / "wide"))
    with pytest.raises(
        WeightLoadError, match=r"(?s)adapters.npz does not fit .*encoder/block_0/attn/query/lora_a: shape"
    ):
        load_adapters(tmp_path / "adapters")
