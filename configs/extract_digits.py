"""Feature-based transfer on the quickstart testbed: the source ViT's features of digits 5-9, cached, then a
linear classifier on 10 labelled examples per class.

    python -m jtl.quickstart                  # builds (once) the source model in workdirs/quickstart/source
    python -m jtl.extract --config configs/extract_digits.py \\
        --config.model.pretrained=workdirs/quickstart/source/export

Prints the linear classifier's test accuracy on the held-out target digits; see BENCHMARKS.md.
"""

from jtl.config import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.num_classes = 5
    c.data.source = "digits"
    c.data.classes = (5, 6, 7, 8, 9)
    c.data.shots = 10
    c.eval_batch_size = 128
    c.extract.batch_size = 50
    c.extract.epochs = 200
    return c
