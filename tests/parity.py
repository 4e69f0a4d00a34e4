"""What the parity tests against PyTorch references share: the error measure and weights that are never zero."""

import numpy as np

TOL = 1e-5  # max-abs error allowed against the reference, in float32


def max_abs(a, b) -> float:
    """The largest absolute difference, computed in float64."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def randomise(reference, seed: int, scale: float = 0.2):
    """Moves every parameter of a PyTorch module off its initial value (zero biases, unit norm scales, constant
    LayerScale), so that a wrongly loaded one shows; returns the module in eval mode."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return reference.eval()
