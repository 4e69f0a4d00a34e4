"""Text transfer without a pretrained encoder: pretrained word vectors (word2vec text and binary, GloVe) as a
frozen embedding table, a vocabulary with out-of-vocabulary handling, and two small classifiers over it."""

from jtl.text._word_vectors import (
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
    "BagOfEmbeddings",
    "TextCNN",
    "Vocabulary",
    "WordVectorError",
    "WordVectors",
    "embedding_table",
    "load_word_vectors",
    "tokenize",
    "with_pretrained_embedding",
]
