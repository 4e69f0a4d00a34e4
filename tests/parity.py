"""What the parity tests against PyTorch references share: the error measure, weights and statistics that are
never trivial, layout conversion, and the comparisons several families run."""

import numpy as np

TOL = 1e-5  # max-abs error allowed against the reference, in float32


def max_abs(a, b) -> float:
    """The largest absolute difference, computed in float64."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def jit_apply(model, variables, *args, **kwargs):
    """``model.apply(variables, *args, **kwargs)`` as one compiled program: run eagerly, every op of the model
    compiles on its own, 2-3x the compile time of the whole forward pass on a cold cache."""
    import functools

    import jax

    return jax.jit(functools.partial(model.apply, **kwargs))(variables, *args)


def randomise(reference, seed: int, scale: float = 0.2):
    """Moves every parameter of a PyTorch module off its initial value (zero biases, unit norm scales, constant
    LayerScale), so that a wrongly loaded one shows; returns the module in eval mode."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return reference.eval()


def nhwc(images) -> np.ndarray:
    """A PyTorch (N, C, H, W) batch as jtl's (N, H, W, C) numpy array."""
    return np.asarray(images.numpy().transpose(0, 2, 3, 1))


def randomise_running_statistics(reference, seed: int):
    """Gives every ``BatchNorm2d`` of a PyTorch module running statistics that are not its initial 0 and 1."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def assert_hidden_states_match(ours, theirs, what: str):
    """Every hidden state (ours: arrays; theirs: torch tensors) within ``TOL``, and as many of them."""
    assert len(ours) == len(theirs), what
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert max_abs(a, b.numpy()) < TOL, f"{what} hidden state {i}"


def text_classification_inputs(vocab_size: int = 100):
    """Token ids (3 x 10, none of them padding ids), token types (the second half 1) and an attention mask with
    right padding in the second and third sequences, as int64 numpy arrays."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab_size, size=(3, 10))
    types = (np.arange(10) >= 5).astype(np.int64)[None].repeat(3, 0)
    mask = np.ones((3, 10), np.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, types, mask


def assert_text_classifier_matches(reference, model, variables, ids, types, mask):
    """Runs a PyTorch sequence classifier and the loaded jtl model on the same inputs; asserts every hidden state
    (on the real tokens: padded positions attend to garbage in both) and the logits within ``TOL``. Returns our
    hidden states."""
    import jax.numpy as jnp
    import torch

    with torch.no_grad():
        expected = reference(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
            output_hidden_states=True,
        )
    logits, state = jit_apply(
        model, variables, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types), mutable=["intermediates"]
    )
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    real = mask.astype(bool)
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(np.asarray(ours)[real], theirs.numpy()[real]) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    return hidden
