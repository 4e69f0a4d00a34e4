"""Memory controls of the shared transformer encoder: ``remat`` and ``scan_layers`` compute what the plain model
computes, with the same parameter names, and a checkpoint written with them resumes without them."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtl.masking as jm
from jtl import adapters, models
from jtl.config import ConfigError
from jtl.train import build_model, train_and_evaluate
from tests.train.conftest import make_tiny_config, with_changes

# (remat, scan_layers), the plain model first.
SETTINGS = [(remat, scan) for scan in (False, True) for remat in models.REMAT]
# Tiny models with three blocks; BERT's dropout is on (its default, 0.1).
MODELS = {"vit": ("vit-testing", 3), "bert": ("bert-testing", 2)}


def _create(family, **fields):
    name, classes = MODELS[family]
    return models.create(name, num_classes=classes, num_layers=3, **fields)


def _inputs(model):
    if isinstance(model, models.ViT):
        return (jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3)),)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 1, 100)
    return ids, jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


def _perturbed(params):
    """Non-zero heads and adapters, so that every parameter gets a gradient."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    return jax.tree.unflatten(
        tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def _logits_and_grads(models_, params, dropout_key=None):
    """Each model's logits and gradients, in evaluation mode, or training mode (dropout on) given a key; compiled
    as one program, which compiles in half the time of one program per model."""
    inputs = _inputs(models_[0])
    train, rngs = dropout_key is not None, {"dropout": dropout_key} if dropout_key is not None else {}

    def loss(p, model):
        logits = model.apply({"params": p}, *inputs, train=train, rngs=rngs)
        return jnp.sum(logits**2), logits

    def run(p):
        return [jax.value_and_grad(loss, has_aux=True)(p, model)[::-1] for model in models_]

    return [(logits, grads) for grads, (_, logits) in jax.jit(run)(params)]


def _assert_close(a, b, what=""):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=str(what))


@pytest.fixture(scope="module")
def initial():
    """Each family's plain model's initial params."""
    return {family: models.init(_create(family))["params"] for family in MODELS}


@pytest.mark.parametrize("family", MODELS)
def test_remat_and_scan_give_the_plain_logits_and_gradients(initial, family):
    params = _perturbed(initial[family])
    plain, *others = _logits_and_grads([_create(family, remat=r, scan_layers=s) for r, s in SETTINGS], params)
    for setting, result in zip(SETTINGS[1:], others, strict=True):
        _assert_close(result, plain, setting)


def test_with_dropout_remat_draws_the_same_masks_and_scan_its_own(initial):
    # Unscanned, a rematerialised block keeps its scope and so its dropout keys. Scanned, each block's key is split
    # from the encoder's stream: masks differ from the unscanned model's, and are the same with and without remat.
    # (The dots_saveable policy draws its keys as "full" does: only what is saved differs.)
    settings = [(remat, scan) for scan in (False, True) for remat in ("none", "full")]
    models_ = [_create("bert", remat=r, scan_layers=s) for r, s in settings]
    params = _perturbed(initial["bert"])
    results = dict(zip(settings, _logits_and_grads(models_, params, jax.random.PRNGKey(7)), strict=True))
    for (remat, scan), result in results.items():
        _assert_close(result, results["none", scan], (remat, scan))
    assert not np.allclose(results["none", True][0], results["none", False][0])


@pytest.mark.parametrize("family", MODELS)
def test_scan_keeps_parameter_names_values_and_hidden_states(initial, family):
    plain, scanned = _create(family), _create(family, scan_layers=True, remat="full")
    variables = models.init(scanned)
    assert jm.leaf_names(variables["params"]) == jm.leaf_names(initial[family])
    assert "encoder/block_2/attn/query/kernel" in jax.tree.leaves(jm.leaf_names(variables["params"]))
    # Initialised as without scan, so the unscanned model runs the scanned model's tree as it is.
    _assert_close(variables["params"], initial[family])
    inputs = _inputs(plain)
    _, kept = scanned.apply(variables, *inputs, mutable=["intermediates"])
    _, expected = plain.apply(variables, *inputs, mutable=["intermediates"])
    states = kept["intermediates"]["encoder"]["hidden_states"]
    assert len(states) == 4
    _assert_close(states, expected["intermediates"]["encoder"]["hidden_states"])


def test_adapters_run_the_same_in_a_scanned_encoder(initial):
    # (IA)^3 picks the layers whose input it scales by their path: the scanned blocks run under the encoder's.
    specs = (adapters.LoRASpec(rank=2), adapters.IA3Spec(), adapters.BottleneckSpec(size=4))
    params = initial["vit"]
    for spec in specs:
        params = adapters.add_adapters(params, spec, jax.random.PRNGKey(5))
    plain = adapters.with_adapters(_create("vit"), *specs)
    scanned = adapters.with_adapters(_create("vit", scan_layers=True, remat="full"), *specs)
    expected, result = _logits_and_grads([plain, scanned], _perturbed(params))
    _assert_close(result, expected)


def test_vpt_and_adapters_on_some_blocks_refuse_scan(initial):
    with pytest.raises(ValueError, match=r"vpt adapters cannot run on ViT with scan_layers=True"):
        adapters.with_adapters(_create("vit", scan_layers=True), adapters.PromptSpec(num_tokens=2, deep=True))
    # A wrapped model switched to scan afterwards is refused when it runs.
    spec = adapters.PromptSpec(num_tokens=2)
    params = adapters.add_adapters(initial["vit"], spec, jax.random.PRNGKey(0))
    wrapped = adapters.with_adapters(_create("vit"), spec).clone(scan_layers=True)
    with pytest.raises(ValueError, match=r"vpt adapters cannot run on ViT with scan_layers=True"):
        wrapped.apply({"params": params}, *_inputs(wrapped))
    spec = adapters.LoRASpec(targets=(r"encoder/block_2/attn/query",))
    params = adapters.add_adapters(initial["vit"], spec, jax.random.PRNGKey(0))
    scanned = adapters.with_adapters(_create("vit", scan_layers=True), spec)
    with pytest.raises(
        ValueError, match=r"scan_layers=True stacks .* block_2 and block_0 differ in \['attn/query/lora_a'"
    ):
        scanned.apply({"params": params}, *_inputs(scanned))


def test_bad_values_and_families_with_their_own_encoder_are_errors():
    model = _create("vit", remat="some")
    with pytest.raises(ValueError, match=r"remat must be one of \('none', 'full', 'dots_saveable'\).*'some'"):
        model.init(jax.random.PRNGKey(0), *_inputs(model))
    config = make_tiny_config()
    bad = with_changes(config, **{"model.remat": "some"})
    with pytest.raises(ConfigError, match=r"config.model.remat='some': expected one of \('none', 'full', 'dots_sav"):
        build_model(bad, 3)
    for name, key, value in [("beit-testing", "scan_layers", True), ("albert-testing", "remat", "full")]:
        changed = with_changes(config, **{"model.name": name, "model.overrides": {}, f"model.{key}": value})
        family = models.family_of(models.create(name)).name
        with pytest.raises(ConfigError, match=rf"config.model.{key}={value!r}: the {family} family"):
            build_model(changed, 3)


def test_build_model_applies_the_keys_outside_the_checkpoint_description():
    config = with_changes(make_tiny_config(), **{"model.remat": "dots_saveable", "model.scan_layers": True})
    model, _, description = build_model(config, 3)
    assert (model.remat, model.scan_layers) == ("dots_saveable", True)
    assert description["class"] == "ViT" and "remat" not in description and "scan_layers" not in description


def test_a_checkpoint_written_with_scan_and_remat_resumes_without_them(tmp_path):
    config = make_tiny_config()
    scanned = train_and_evaluate(with_changes(config, **{"model.scan_layers": True, "model.remat": "full"}), tmp_path)
    # Stopped after its step-4 checkpoint, then restarted without scan and remat: the same last 4 steps.
    shutil.rmtree(tmp_path / "checkpoints" / "8")
    (tmp_path / "final_metrics.json").unlink()
    resumed = train_and_evaluate(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [*range(1, 9), *range(5, 9)]
    assert (scanned["step"], resumed["step"]) == (8, 8)
    _assert_close(resumed["params"], scanned["params"])
