"""Fine-tune a torchvision-layout or Hugging Face ResNet on a TFDS dataset (BiT-style SGD recipe).

    python -m jtl.train --config configs/resnet_finetune.py:50,oxford_iiit_pet --workdir workdirs/r50_pets

Args: the depth (18, 34, 50, 101; default 50) and the dataset (cifar10, oxford_iiit_pet; default cifar10).
Weights: `microsoft/resnet-<depth>` from the hub, or `--config.model.pretrained=resnet50.pth` (a torchvision
state dict). The backbone's BatchNorm statistics update only when every BatchNorm layer trains
(`--config.frozen='("embed/.*", "stage_.*")'` keeps them fixed). Not yet run to completion here.
"""

from jtl.config import base_config

DATASETS = {"cifar10": (10, 10_000, 224), "oxford_iiit_pet": (37, 2_000, 224)}


def get_config(arg=None):
    depth, dataset = (arg or "50,cifar10").split(",")
    if depth not in ("18", "34", "50", "101") or dataset not in DATASETS:
        raise ValueError(f"configs/resnet_finetune.py:{arg}: depths 18/34/50/101, datasets {sorted(DATASETS)}")
    num_classes, steps, size = DATASETS[dataset]
    c = base_config()
    c.num_classes = num_classes
    c.model.pretrained = f"microsoft/resnet-{depth}"
    c.model.overrides = {"image_size": size}
    c.data.source = "tfds"
    c.data.name = dataset
    c.data.mean = (0.485, 0.456, 0.406)
    c.data.std = (0.229, 0.224, 0.225)
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.learning_rate = 0.003
    c.weight_decay = 0.0
    c.grad_clip = 1.0
    c.warmup_steps = 500
    c.total_steps = steps
    c.batch_size = 512
    c.eval_batch_size = 512
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 1000
    return c
