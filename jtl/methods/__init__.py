"""Transfer-learning methods on jtl's models and masking: LoRA and BitFit, L2-SP, BiT-HyperRule, BatchNorm
re-estimation, MixUp, feature extraction and linear classifiers, word vectors, and transferability scores
(LogME, LEEP, NCE, H-score), and domain-adaptation losses (gradient reversal, MMD, CORAL, CDAN, MCC), and multi-task
weighting (uncertainty, DWA, GradNorm, PCGrad)."""

from jtl.methods._domain import (
    cdan_inputs,
    coral,
    dann_coefficient,
    domain_adversarial_loss,
    entropy,
    gradient_reversal,
    mcc,
    mmd,
)
from jtl.methods._features import extract_features, feature_fn
from jtl.methods._finetune import HyperRule, L2SPState, bit_hyperrule, l2_sp, mixup, reestimate_batch_stats
from jtl.methods._linear import LinearClassifier, fit_linear, fit_linear_search, linear_epochs
from jtl.methods._lora import (
    BITFIT_TRAINABLE,
    LORA_TRAINABLE,
    LoRASpec,
    add_adapters,
    base_model,
    load_adapters,
    merge_adapters,
    save_adapters,
    with_lora,
)
from jtl.methods._multitask import dwa_weights, gradnorm_loss, pcgrad, uncertainty_weighted_loss
from jtl.methods._transferability import h_score, leep, logme, nce
from jtl.methods._word_vectors import (
    BagOfEmbeddings,
    TextCNN,
    Vocabulary,
    WordVectorError,
    WordVectors,
    embedding_table,
    load_word_vectors,
    tokenize,
    with_pretrained_embedding,
)

__all__ = [
    "BITFIT_TRAINABLE",
    "LORA_TRAINABLE",
    "BagOfEmbeddings",
    "HyperRule",
    "L2SPState",
    "LinearClassifier",
    "LoRASpec",
    "TextCNN",
    "Vocabulary",
    "WordVectorError",
    "WordVectors",
    "add_adapters",
    "base_model",
    "bit_hyperrule",
    "cdan_inputs",
    "coral",
    "dann_coefficient",
    "domain_adversarial_loss",
    "dwa_weights",
    "embedding_table",
    "entropy",
    "extract_features",
    "feature_fn",
    "fit_linear",
    "fit_linear_search",
    "gradient_reversal",
    "gradnorm_loss",
    "h_score",
    "l2_sp",
    "leep",
    "linear_epochs",
    "load_adapters",
    "load_word_vectors",
    "logme",
    "mcc",
    "merge_adapters",
    "mixup",
    "mmd",
    "nce",
    "pcgrad",
    "reestimate_batch_stats",
    "save_adapters",
    "tokenize",
    "uncertainty_weighted_loss",
    "with_lora",
    "with_pretrained_embedding",
]
