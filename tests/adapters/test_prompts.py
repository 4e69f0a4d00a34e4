import jax
import numpy as np
import optax
import pytest

import jtl.masking as jm
from jtl import models
from jtl.adapters import PromptSpec, merge_adapters, trainable_patterns, with_adapters
from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step


@pytest.mark.parametrize("name", ["vit-testing", "dinov2-testing", "clip-testing", "siglip-testing"])
@pytest.mark.parametrize("deep", [False, True])
def test_prompts_change_the_output_not_its_shape(name, deep):
    model = models.create(name, num_classes=3, head_zero_init=False)
    variables = models.init(model)
    spec = PromptSpec(num_tokens=3, deep=deep)
    params = spec.add(variables["params"], jax.random.PRNGKey(0))
    prompted = with_adapters(model, spec)
    (x,) = model.example_inputs(2)
    base, base_states = model.apply(variables, x, mutable=["intermediates"])
    out, states = prompted.apply({"params": params}, x, mutable=["intermediates"])
    assert out.shape == base.shape == (2, 3)
    assert not np.allclose(out, base, atol=1e-4)
    # The last block's output (what the norm and the pooling see) has the usual tokens.
    tokens = [h.shape[1] for h in states["intermediates"]["encoder"]["hidden_states"]]
    usual = base_states["intermediates"]["encoder"]["hidden_states"][0].shape[1]
    assert tokens == ([usual] * 3 if deep else [usual, usual + 3, usual])
    # A constant shift would vanish in the pre-norm blocks' LayerNorms: perturb each value.
    key = jax.random.PRNGKey(1)
    perturbed = jm.map_with_names(
        lambda n, p: p + 0.5 * jax.random.normal(key, p.shape) if n.endswith("vpt_prompt") else p, params
    )
    assert not np.allclose(prompted.apply({"params": perturbed}, x), out, atol=1e-4)


def test_shallow_and_deep_parameter_counts():
    params = models.init(models.create("vit-testing", num_classes=3))["params"]

    def added(spec):
        return {n: x.shape for n, x in jm.named_leaves(spec.add(params, jax.random.PRNGKey(0))) if "vpt" in n}

    assert added(PromptSpec(num_tokens=5)) == {"encoder/block_0/vpt_prompt": (5, 16)}
    assert added(PromptSpec(num_tokens=5, deep=True)) == {f"encoder/block_{i}/vpt_prompt": (5, 16) for i in (0, 1)}
    # VPT's uniform bound: sqrt(6 / (3 x 4 x 4 patch inputs + 16 hidden)).
    prompt = PromptSpec().add(params, jax.random.PRNGKey(0))["encoder"]["block_0"]["vpt_prompt"]
    assert 0.25 < float(abs(prompt).max()) <= (6 / (3 * 4 * 4 + 16)) ** 0.5


def test_padding_patches_stay_masked_with_prompts():
    model = models.create("siglip2-testing", num_classes=3, head_zero_init=False, pooling="mean")
    spec = PromptSpec(num_tokens=2, deep=True)
    params = spec.add(models.init(model)["params"], jax.random.PRNGKey(0))
    prompted = with_adapters(model, spec)
    patches = np.random.default_rng(0).normal(size=(1, 16, 4 * 4 * 3)).astype(np.float32)
    shapes = np.array([[4, 4]])
    padded = np.concatenate([patches, np.full((1, 4, 48), 7.0, np.float32)], axis=1)
    mask = np.array([[1] * 16 + [0] * 4])
    out = prompted.apply({"params": params}, patches, np.ones((1, 16), np.int32), shapes)
    np.testing.assert_allclose(prompted.apply({"params": params}, padded, mask, shapes), out, atol=1e-5)


def test_only_prompts_and_head_change_in_a_train_step():
    model = models.create("vit-testing", num_classes=3)
    spec = PromptSpec(num_tokens=2, deep=True)
    params = spec.add(models.init(model)["params"], jax.random.PRNGKey(0))
    trainable = list(trainable_patterns(spec))
    tx = freeze(optax.adam(1e-2), trainable)
    step = jax.jit(make_train_step(with_adapters(model, spec), Classification(3), tx, trainable))
    state = init_state({"params": params}, tx)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32), "label": rng.integers(0, 3, 8)}
    for _ in range(2):  # the zero-initialised head moves first, then the prompts
        state, _ = step(state, batch)
    for (name, before), (_, after) in zip(jm.named_leaves(params), jm.named_leaves(state.params), strict=True):
        if name.endswith("vpt_prompt") or name.startswith("head/"):
            assert not np.array_equal(before, after), name
        else:
            assert np.array_equal(before, after), name


def test_families_that_cannot_take_prompts_are_refused():
    spec = PromptSpec()
    swin = models.init(models.create("swin-testing", num_classes=3))["params"]
    with pytest.raises(jm.MaskingError, match=r"ViT-style encoder .*stage_0.*Swin"):
        spec.add(swin, jax.random.PRNGKey(0))
    beit = models.create("beit-testing", num_classes=3)
    with pytest.raises(jm.MaskingError, match=r"BEiT-style .*rel_pos_embedding.*relative position bias"):
        spec.add(models.init(beit)["params"], jax.random.PRNGKey(0))
    bert = models.create("bert-testing", num_classes=3)
    with pytest.raises(jm.MaskingError, match="needs a vision encoder with embed/patch"):
        spec.add(models.init(bert)["params"], jax.random.PRNGKey(0))
    # Prompts moved onto a text encoder by hand are refused when it runs.
    vit = spec.add(models.init(models.create("vit-testing", num_classes=3))["params"], jax.random.PRNGKey(0))
    params = models.init(bert)["params"]
    params["encoder"]["block_0"]["vpt_prompt"] = vit["encoder"]["block_0"]["vpt_prompt"]
    with pytest.raises(jm.MaskingError, match="VPT cannot adapt Bert: it is not a ViT-style vision encoder"):
        with_adapters(bert, spec).apply({"params": params}, *bert.example_inputs())
    with pytest.raises(ValueError, match="VPT prompts cannot be merged"):
        merge_adapters(vit, spec)
