import subprocess
import sys

HEAVY = ["tensorflow", "tensorflow_datasets", "torch", "transformers", "grain", "orbax", "flax"]


def test_import_jtl_masking_loads_only_jax_and_optax():
    code = (
        "import sys, jtl.masking\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import jtl.masking pulled in: {out.stdout.strip()}"
