"""Fine-tune models larger than one device: ViT-L/16 (vit_jax's recipe, configs/vit_finetune.py) or BERT-large
(configs/bert_finetune.py) with parameters and optimizer state sharded over the devices (FSDP), each block
rematerialised in the backward pass, and bfloat16 compute. The blocks are not scanned: jtl keeps their
parameters under per-block names, so a scan stacks a copy of them in every step (BENCHMARKS.md, "Memory: remat
and scan"), which costs more than it saves when parameters dominate memory.

    python -m jtl.train --config configs/large_models.py:vit-l16 --workdir workdirs/vit_l16
    python -m jtl.train --config configs/large_models.py:bert-large --config.mesh.model=2 --workdir workdirs/bert_l

The first uses every device of the host as one data axis, the parameters split over it; the second also splits
each attention and MLP layer over pairs of devices (tensor parallelism, for activations too large for FSDP alone).
On several hosts run the same command on each (on GPU machines add ``--coordinator host0:1234 --num_processes N
--process_id I``; Cloud TPU finds its peers) with a workdir every host reaches: each host writes its own shards of
every checkpoint, and a run resumes on another number of devices. Checkpoints and parameter names are those of the
unsharded, unscanned model.
"""

from pathlib import Path

from jtl.config import load_config

BASES = {"vit-l16": "vit_finetune.py:l16,cifar100", "bert-large": "bert_finetune.py:large"}


def get_config(arg=None):
    name = arg or "vit-l16"
    if name not in BASES:
        raise ValueError(f"configs/large_models.py:{name}: expected one of {sorted(BASES)}")
    c = load_config(str(Path(__file__).resolve().parent / BASES[name]))
    c.unlock()
    c.sharding.fsdp = True
    c.model.remat = "full"
    c.model.overrides = {**c.model.overrides, "dtype": "bfloat16"}  # float32 parameters, bfloat16 compute
    return c
