"""The BERT families: BERT (``bert-{tiny,mini,small,base,large}``, ``minilm-l6``, ``minilm-l12``,
``distilbert-base``, ``electra-{small,base,large}``, ``*-testing``; Hugging Face BERT, RoBERTa, XLM-RoBERTa,
DistilBERT and ELECTRA's discriminator) and ALBERT, which builds on its embeddings (factorised, with blocks shared
across depth; ``albert-{base,large,xlarge,xxlarge}``, each also ``-v2``, ``albert-testing``): the modules, named
sizes, layer indices and weight layouts; they take text."""

from jtl.models._layers import mean_pool
from jtl.models._registry import Family, register
from jtl.models.bert._albert import CONFIGS as ALBERT_CONFIGS
from jtl.models.bert._albert import Albert, albert_config
from jtl.models.bert._albert import layer_index as albert_layer_index
from jtl.models.bert._albert_weights import HF_ALBERT
from jtl.models.bert._model import CONFIGS, Bert, bert_config, layer_index
from jtl.models.bert._weights import HF_BERT, HF_DISTILBERT, HF_ELECTRA, HF_ROBERTA

FAMILY = register(Family("bert", Bert, CONFIGS, layer_index, "text", (HF_BERT, HF_ROBERTA, HF_DISTILBERT, HF_ELECTRA)))
ALBERT_FAMILY = register(Family("albert", Albert, ALBERT_CONFIGS, albert_layer_index, "text", (HF_ALBERT,)))

__all__ = [
    "ALBERT_FAMILY",
    "FAMILY",
    "HF_ALBERT",
    "HF_BERT",
    "HF_DISTILBERT",
    "HF_ELECTRA",
    "HF_ROBERTA",
    "Albert",
    "Bert",
    "albert_config",
    "bert_config",
    "mean_pool",
]
