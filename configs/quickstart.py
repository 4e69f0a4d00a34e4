"""The offline transfer testbed: a small ViT pretrained on scikit-learn's digits 0-4 (the source), transferred to
digits 5-9 with 10 labelled examples per class (the target); every transfer method is one argument.

    python -m jtl.train --config configs/quickstart.py:scratch
    python -m jtl.train --config configs/quickstart.py:source      # pretrain on digits 0-4
    python -m jtl.train --config configs/quickstart.py:lpft --config.model.pretrained=workdirs/source/export

Variants: ``source`` (and ``source-shuffled50`` / ``source-shuffled100``: half / all of the source labels
shuffled, deliberately worse sources), ``scratch``, and with a pretrained source: ``frozen`` (linear probe: new
head on the frozen backbone), ``last1`` (last block + head), ``full``, ``lpft`` (linear probe for 100 steps,
then full fine-tuning), ``llrd`` (layer-wise learning-rate decay 0.7), ``ulmfit`` (gradual unfreezing, a block
every 50 steps, discriminative rates), ``l2sp`` (L2-SP), ``bit`` (BiT-HyperRule schedule), ``lora`` (rank 4 on
query/value), ``dora`` (DoRA, rank 4 on query/value), ``ia3`` ((IA)^3 on key/value/MLP), ``vpt`` (deep Visual
Prompt Tuning, 4 prompts), ``adapters`` (Houlsby bottleneck adapters, width 8), ``qlora`` (LoRA rank 4 beside NF4
query/value kernels), ``bitfit`` (biases + head). Every target run also evaluates on rotated target digits
(``eval_ood/accuracy``).

`python -m jtl.quickstart` runs scratch / frozen / full and prints their table; `python -m
benchmarks.transfer_methods` runs every variant (BENCHMARKS.md).
"""

from jtl.config import base_config

SOURCES = ("source", "source-shuffled50", "source-shuffled100")
TARGETS = ("scratch", "frozen", "last1", "full", "lpft", "llrd", "ulmfit", "l2sp", "bit", "lora", "bitfit")
PEFT = ("dora", "ia3", "vpt", "adapters", "qlora")
VARIANTS = SOURCES + TARGETS + PEFT


def get_config(arg=None):
    variant = arg or "scratch"
    if variant not in VARIANTS:
        raise ValueError(f"configs/quickstart.py:{variant}: expected one of {VARIANTS}")
    source = variant in SOURCES
    c = base_config()
    c.num_classes = 5
    c.model.name = "vit-digits"  # 2 blocks, width 32, 2x2 patches of the 8x8 digits
    c.data.classes = (0, 1, 2, 3, 4) if source else (5, 6, 7, 8, 9)
    c.data.shots = 0 if source else 10
    c.optimizer = "adamw"
    c.learning_rate = 3e-3 if variant in ("scratch", *SOURCES) else 1e-3
    # The source model is regularised (label smoothing, weight decay) so that its features are not
    # specific to digits 0-4.
    c.weight_decay = 0.05 if source else 1e-4
    c.label_smoothing = 0.1 if source else 0.0
    c.warmup_steps = 20
    c.total_steps = 1000 if source else 300
    c.batch_size = 48 if source else 32
    c.log_every = 100
    c.checkpoint_every = 0
    if variant == "source-shuffled50":
        c.data.label_noise = 0.5
    elif variant == "source-shuffled100":
        c.data.label_noise = 1.0
    if not source:
        c.data.ood_shift = "rotate"
    if variant == "frozen":
        c.trainable = ("head/.*",)
        c.learning_rate = 1e-2
    elif variant == "last1":
        c.train_last_n = 1
    elif variant == "lpft":
        c.unfreeze_starts = (0, 100)
        c.learning_rate = 3e-3
    elif variant == "llrd":
        c.layer_decay = 0.7
        c.learning_rate = 2e-3
    elif variant == "ulmfit":
        c.unfreeze_starts = (0, 50, 100)
        c.layer_decay = 0.7
        c.schedule = "linear"  # ULMFiT's slanted triangular rate: a short warm-up, then a linear decay
        c.learning_rate = 3e-3
    elif variant == "l2sp":
        c.l2sp_alpha = 0.1
        c.l2sp_beta = 1e-3
        c.weight_decay = 0.0
    elif variant == "bit":
        c.hyperrule = "bit"
    elif variant in ("lora", "dora", "qlora"):
        c.lora.rank = 4
        c.lora.alpha = 8.0
        c.lora.dora = variant == "dora"
        c.lora.quantize = "nf4" if variant == "qlora" else ""
        c.learning_rate = 5e-3
    elif variant == "ia3":
        c.ia3.targets = (r"encoder/block_\d+/attn/(key|value)", r"encoder/block_\d+/mlp/fc2")
        c.ia3.feedforward = (r"encoder/block_\d+/mlp/fc2",)
        c.learning_rate = 1e-2
    elif variant == "vpt":
        c.vpt.num_tokens = 4
        c.vpt.deep = True
        c.learning_rate = 1e-2
    elif variant == "adapters":
        c.bottleneck.size = 8
        c.learning_rate = 5e-3
    elif variant == "bitfit":
        c.trainable = (".*/bias", "head/.*")
        c.learning_rate = 5e-3
    return c
