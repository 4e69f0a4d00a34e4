"""The BERT family: the module, its named sizes (``bert-{tiny,mini,small,base,large}``, ``minilm-l6``,
``minilm-l12``, ``distilbert-base``, ``electra-{small,base,large}``, ``*-testing``), layer index and weight
layouts (Hugging Face BERT, RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA's discriminator);
it takes text."""

from jtl.models._registry import Family, register
from jtl.models.bert._model import CONFIGS, Bert, bert_config, layer_index, mean_pool
from jtl.models.bert._weights import HF_BERT, HF_DISTILBERT, HF_ELECTRA, HF_ROBERTA

FAMILY = register(Family("bert", Bert, CONFIGS, layer_index, "text", (HF_BERT, HF_ROBERTA, HF_DISTILBERT, HF_ELECTRA)))

__all__ = ["FAMILY", "HF_BERT", "HF_DISTILBERT", "HF_ELECTRA", "HF_ROBERTA", "Bert", "bert_config", "mean_pool"]
