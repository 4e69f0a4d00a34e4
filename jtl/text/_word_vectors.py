"""Pretrained word vectors (word2vec text and binary, GloVe) as a frozen embedding table, a vocabulary with
out-of-vocabulary handling, and two small text classifiers over it (mean of embeddings, a 1-D CNN)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[\w']+")


class WordVectorError(ValueError):
    """A word-vector file that cannot be read; the message names the file and line or entry."""


class WordVectors(NamedTuple):
    """Words and their vectors (row ``i`` is ``words[i]``)."""

    words: tuple[str, ...]
    vectors: np.ndarray

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens.

    Args:
      text: the text.

    Returns:
      The tokens, in order.

    >>> tokenize("It's GOOD, really good!")
    ["it's", 'good', 'really', 'good']
    """
    return _TOKEN.findall(text.lower())


def _read_text(path: Path, header: bool) -> WordVectors:
    words, rows, dim = [], [], None
    with path.open(encoding="utf-8", errors="replace") as f:
        if header:
            first = f.readline().split()
            if len(first) != 2 or not all(x.isdigit() for x in first):
                raise WordVectorError(f"{path}: line 1 should be the word2vec header '<count> <dim>', got {first[:4]}")
            dim = int(first[1])
        for number, line in enumerate(f, start=2 if header else 1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            dim = dim or len(parts) - 1
            if len(parts) - 1 != dim:
                raise WordVectorError(
                    f"{path}: line {number} ({parts[0]!r}) has {len(parts) - 1} values, expected {dim}"
                )
            words.append(parts[0])
            rows.append(np.asarray(parts[1:], np.float32))
    if not rows:
        raise WordVectorError(f"{path}: no vectors found")
    return WordVectors(tuple(words), np.stack(rows))


def _read_binary(path: Path) -> WordVectors:
    with path.open("rb") as f:
        header = f.readline().split()
        if len(header) != 2:
            raise WordVectorError(f"{path}: the binary word2vec header should be '<count> <dim>', got {header[:4]}")
        count, dim = int(header[0]), int(header[1])
        words, vectors = [], np.empty((count, dim), np.float32)
        for i in range(count):
            word = bytearray()
            while (char := f.read(1)) != b" ":
                if not char:
                    raise WordVectorError(f"{path}: ends inside entry {i} of {count}")
                if char != b"\n":  # some writers end each vector with a newline
                    word += char
            data = f.read(4 * dim)
            if len(data) != 4 * dim:
                raise WordVectorError(f"{path}: entry {i} ({word.decode(errors='replace')!r}) is cut short")
            words.append(word.decode("utf-8", errors="replace"))
            vectors[i] = np.frombuffer(data, "<f4")
    return WordVectors(tuple(words), vectors)


def load_word_vectors(path: str | Path, format: str = "auto") -> WordVectors:
    """Reads word vectors.

    Args:
      path: the file.
      format: ``word2vec`` (text with a ``<count> <dim>`` header), ``word2vec-binary``, ``glove`` (text, no
        header) or ``auto`` (binary for ``.bin``, else by whether the first line is a header).

    Returns:
      The :class:`WordVectors`.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "v.txt")
    >>> _ = open(path, "w").write("good 1.0 0.5\\nbad -1.0 0.5\\n")
    >>> vectors = load_word_vectors(path)
    >>> vectors.words, vectors.vectors.shape
    (('good', 'bad'), (2, 2))
    """
    path = Path(path)
    if not path.is_file():
        raise WordVectorError(f"{path}: no such file")
    if format == "auto":
        if path.suffix == ".bin":
            format = "word2vec-binary"
        else:
            with path.open(encoding="utf-8", errors="replace") as f:
                first = f.readline().split()
            format = "word2vec" if len(first) == 2 and all(x.isdigit() for x in first) else "glove"
    if format == "word2vec-binary":
        return _read_binary(path)
    if format in ("word2vec", "glove"):
        return _read_text(path, header=format == "word2vec")
    raise WordVectorError(f"{path}: unknown format {format!r}; known: word2vec, word2vec-binary, glove, auto")


class Vocabulary(NamedTuple):
    """Token ids: ``<pad>`` is 0, ``<unk>`` is 1, then the words."""

    words: tuple[str, ...]

    @classmethod
    def build(cls, words: Iterable[str]) -> Vocabulary:
        """A vocabulary of ``words`` (deduplicated, in order) after ``<pad>`` and ``<unk>``."""
        return cls((PAD, UNK, *dict.fromkeys(w for w in words if w not in (PAD, UNK))))

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def encode(self, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
        """Token ids (N, max_length), padded and truncated, and the attention mask.

        >>> vocab = Vocabulary.build(["good", "bad"])
        >>> vocab.encode(["good very good"], 4)["input_ids"].tolist()
        [[2, 1, 2, 0]]
        """
        index = self.index
        ids = np.zeros((len(texts), max_length), np.int32)
        for row, text in enumerate(texts):
            tokens = [index.get(t, 1) for t in tokenize(text)][:max_length]
            ids[row, : len(tokens)] = tokens
        return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32)}


def embedding_table(
    vectors: WordVectors, vocabulary: Vocabulary, oov: str = "zeros", seed: int = 0
) -> tuple[np.ndarray, int]:
    """The (len(vocabulary), dim) table: pretrained rows where the word has a vector.

    Args:
      vectors: the pretrained vectors.
      vocabulary: the ids to fill.
      oov: rows of words without a vector (and ``<unk>``): ``zeros``, ``mean`` (of all vectors) or ``random``
        (normal with the vectors' per-dimension std). ``<pad>`` is always zero.
      seed: for ``random``.

    Returns:
      ``(table, number of vocabulary words found in the vectors)``.

    >>> wv = WordVectors(("good", "bad"), np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32))
    >>> table, found = embedding_table(wv, Vocabulary.build(["bad", "meh"]), oov="mean")
    >>> table.tolist(), found
    ([[0.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [0.0, 0.0]], 1)
    """
    lookup = {w: i for i, w in enumerate(vectors.words)}
    if oov == "zeros":
        fill = np.zeros((len(vocabulary.words), vectors.dim), np.float32)
    elif oov == "mean":
        fill = np.broadcast_to(vectors.vectors.mean(0), (len(vocabulary.words), vectors.dim)).copy()
    elif oov == "random":
        rng = np.random.default_rng(seed)
        fill = rng.normal(size=(len(vocabulary.words), vectors.dim)) * vectors.vectors.std(0)
    else:
        raise ValueError(f"oov={oov!r}; known: zeros, mean, random")
    table = fill.astype(np.float32)
    found = 0
    for i, word in enumerate(vocabulary.words):
        if word in lookup:
            table[i] = vectors.vectors[lookup[word]]
            found += 1
    table[0] = 0.0
    return table, found


class BagOfEmbeddings(nn.Module):
    """Mean of the tokens' embeddings (padding masked), then a linear ``head``."""

    vocab_size: int
    dim: int
    num_classes: int

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        tokens = nn.Embed(self.vocab_size, self.dim, name="embed")(input_ids)
        mask = attention_mask[..., None].astype(tokens.dtype)
        pooled = (tokens * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
        return nn.Dense(self.num_classes, name="head")(pooled)


class TextCNN(nn.Module):
    """Kim (2014)-style CNN: 1-D convolutions of several widths over the embeddings, max-pooled, then ``head``."""

    vocab_size: int
    dim: int
    num_classes: int
    widths: tuple[int, ...] = (2, 3, 4)
    filters: int = 16

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        tokens = nn.Embed(self.vocab_size, self.dim, name="embed")(input_ids)
        pooled = []
        for width in self.widths:
            maps = nn.relu(nn.Conv(self.filters, (width,), padding="SAME", name=f"conv_{width}")(tokens))
            maps = jnp.where(attention_mask[..., None].astype(bool), maps, -jnp.inf)
            pooled.append(jnp.max(maps, axis=1))
        return nn.Dense(self.num_classes, name="head")(jnp.concatenate(pooled, -1))


def with_pretrained_embedding(params: dict, table: np.ndarray) -> dict:
    """``params`` with ``embed/embedding`` replaced by ``table`` (shapes must agree).

    Args:
      params: the model's params, with an ``embed/embedding`` table.
      table: the pretrained vectors, shape (vocab size, dim).

    Returns:
      A new params tree; ``params`` is not changed.

    >>> model = BagOfEmbeddings(vocab_size=3, dim=2, num_classes=2)
    >>> params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4)))["params"]
    >>> with_pretrained_embedding(params, np.ones((3, 2), np.float32))["embed"]["embedding"].tolist()
    [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    """
    current = params["embed"]["embedding"]
    if current.shape != table.shape:
        raise WordVectorError(f"embedding table {table.shape} does not fit the model's embed/embedding {current.shape}")
    return {**params, "embed": {"embedding": jnp.asarray(table)}}
