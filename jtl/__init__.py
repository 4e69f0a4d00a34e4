"""jtl: transfer learning in JAX/Flax.

Subpackages are imported on demand (``import jtl.masking``) so that a project using only the masking
toolkit never loads TensorFlow Datasets, transformers or torch.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
