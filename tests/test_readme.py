"""The README's code blocks run as written."""

import re
from pathlib import Path

import optax

from tests.masking.models import linen_setup

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_masking_example_runs_on_a_users_own_params(capsys):
    block = next(b for b in _python_blocks() if "import jtl.masking" in b)
    params, loss_fn, batch = linen_setup()
    namespace = {"params": params, "loss_fn": loss_fn, "batch": batch}
    exec(compile(block, str(README), "exec"), namespace)
    updates = namespace["updates"]
    assert not updates["embed"]["kernel"].any() and updates["head"]["kernel"].any()
    assert isinstance(namespace["tx"], optax.GradientTransformation)
    assert "total" in capsys.readouterr().out


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make quickstart", "make test"]


def test_lora_example_merges_to_the_same_logits():
    import jax
    import numpy as np

    block = next(b for b in _python_blocks() if "adapters.LoRASpec" in b)
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)
    model, lora_model, params, merged = (namespace[k] for k in ("model", "lora_model", "params", "merged"))
    trained = jax.tree_util.tree_map(lambda x: x + 0.01, params)  # nonzero lora_b, as after training
    (images,) = model.example_inputs()
    np.testing.assert_allclose(
        model.apply({"params": namespace["adapters"].merge_adapters(trained, namespace["spec"])}, images),
        lora_model.apply({"params": trained}, images),
        atol=1e-5,
    )
    assert "lora_a" not in str(jax.tree_util.tree_structure(merged))


def test_domain_adaptation_example_gives_the_discriminators_loss():
    import numpy as np

    block = next(b for b in _python_blocks() if "adaptation.AdaptationSpec" in b)
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)
    # Both domains' features are constant, so the discriminator gives one logit z to the source and one to the
    # target: the loss is the mean of softplus(-z_source) and softplus(z_target).
    from jtl.objectives.adaptation import DomainDiscriminator

    d = DomainDiscriminator(256)
    z_source = d.apply({"params": namespace["discriminator"]}, namespace["source_features"])[0]
    z_target = d.apply({"params": namespace["discriminator"]}, namespace["target_features"])[0]
    expected = 0.5 * (np.logaddexp(0, -z_source) + np.logaddexp(0, z_target))
    np.testing.assert_allclose(namespace["loss"], expected, rtol=1e-5)
    assert 0.0 < float(namespace["metrics"]["reversal"]) < 1.0


def test_peft_methods_example_merges_and_unmerges():
    import jax
    import numpy as np

    import jtl.masking as jm

    block = next(b for b in _python_blocks() if "adapters.DoRASpec" in b)
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)
    model, wrapped, params = (namespace[k] for k in ("model", "wrapped", "params"))
    (images,) = model.example_inputs()
    np.testing.assert_allclose(
        model.apply({"params": namespace["merged"]}, images), wrapped.apply({"params": params}, images), atol=1e-5
    )
    for (name, before), (_, after) in zip(jm.named_leaves(params), jm.named_leaves(namespace["restored"]), strict=True):
        np.testing.assert_allclose(after, before, atol=1e-6, err_msg=name)
    assert "lora_magnitude" not in str(jax.tree_util.tree_structure(namespace["merged"]))
