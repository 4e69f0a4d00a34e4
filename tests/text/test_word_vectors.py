import struct

import jax
import numpy as np
import optax
import pytest

from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step
from jtl.text import (
    BagOfEmbeddings,
    TextCNN,
    Vocabulary,
    WordVectorError,
    WordVectors,
    embedding_table,
    load_word_vectors,
    with_pretrained_embedding,
)


def _synthetic_vectors(seed=0, dim=16):
    """'Pretrained' vectors: 20 positive and 20 negative words apart along one direction, 20 neutral fillers."""
    rng = np.random.default_rng(seed)
    positive = [f"pos{i}" for i in range(20)]
    negative = [f"neg{i}" for i in range(20)]
    fillers = [f"the{i}" for i in range(20)]
    words = positive + negative + fillers
    vectors = rng.normal(size=(len(words), dim)).astype(np.float32) * 0.5
    vectors[:20, 0] += 2.0
    vectors[20:40, 0] -= 2.0
    return WordVectors(tuple(words), vectors), positive, negative, fillers


def _write_all_formats(vectors, directory):
    glove = directory / "vectors.glove.txt"
    lines = [" ".join([w, *(f"{x:.6f}" for x in v)]) for w, v in zip(vectors.words, vectors.vectors, strict=True)]
    glove.write_text("\n".join(lines) + "\n")
    text = directory / "vectors.w2v.txt"
    text.write_text(f"{len(lines)} {vectors.dim}\n" + "\n".join(lines) + "\n")
    binary = directory / "vectors.bin"
    with binary.open("wb") as f:
        f.write(f"{len(lines)} {vectors.dim}\n".encode())
        for word, vector in zip(vectors.words, vectors.vectors, strict=True):
            f.write(word.encode() + b" " + struct.pack(f"<{vectors.dim}f", *vector) + b"\n")
    return glove, text, binary


def test_the_three_formats_load_the_same_vectors(tmp_path):
    vectors, *_ = _synthetic_vectors()
    glove, text, binary = _write_all_formats(vectors, tmp_path)
    loaded = {path: load_word_vectors(path) for path in (glove, text, binary)}
    for path, result in loaded.items():
        assert result.words == vectors.words, path
        np.testing.assert_allclose(result.vectors, vectors.vectors, atol=1e-6 if path != binary else 0)
    assert load_word_vectors(text, format="word2vec").words == vectors.words


def test_bad_files_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("good 1.0 0.5\nbad -1.0\n")
    with pytest.raises(WordVectorError, match=r"bad.txt: line 2 \('bad'\) has 1 values, expected 2"):
        load_word_vectors(bad)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(b"2 4\ngood " + struct.pack("<4f", 1, 2, 3, 4) + b"bad " + b"\x00" * 6)
    with pytest.raises(WordVectorError, match=r"cut.bin: entry 1 \('bad'\) is cut short"):
        load_word_vectors(cut)


def test_oov_rows_and_unknown_tokens():
    vectors, *_ = _synthetic_vectors()
    vocab = Vocabulary.build(["pos0", "never_seen"])
    table, found = embedding_table(vectors, vocab, oov="random", seed=1)
    assert found == 1
    np.testing.assert_array_equal(table[2], vectors.vectors[0])
    assert np.all(table[0] == 0) and np.any(table[3] != 0)
    encoded = vocab.encode(["pos0 never_seen unheard", ""], 5)
    assert encoded["input_ids"].tolist() == [[2, 3, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert encoded["attention_mask"].sum() == 3


def _texts(rng, positive, negative, fillers, count):
    texts, labels = [], []
    for _ in range(count):
        label = int(rng.integers(0, 2))
        pool = positive if label else negative
        words = list(rng.choice(fillers, 3)) + list(rng.choice(pool, 2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.array(labels, np.int32)


def _train(model, params, trainable, batch, steps=150):
    tx = freeze(optax.adam(3e-2), trainable)
    step = jax.jit(make_train_step(model, Classification(2), tx, trainable))
    state = init_state({"params": params}, tx)
    for _ in range(steps):
        state, _ = step(state, batch)
    return state.params


@pytest.mark.parametrize("architecture", ["bag", "cnn"])
def test_frozen_word_vectors_generalise_to_words_unseen_in_training(architecture):
    vectors, positive, negative, fillers = _synthetic_vectors()
    rng = np.random.default_rng(0)
    # Training texts use half of the sentiment words; test texts only the other half.
    train_texts, train_labels = _texts(rng, positive[:10], negative[:10], fillers, 200)
    test_texts, test_labels = _texts(rng, positive[10:], negative[10:], fillers, 200)
    vocab = Vocabulary.build(vectors.words)
    table, found = embedding_table(vectors, vocab)
    assert found == len(vectors.words)
    if architecture == "bag":
        model = BagOfEmbeddings(len(vocab.words), vectors.dim, 2)
        head = ["head/.*"]
    else:
        model = TextCNN(len(vocab.words), vectors.dim, 2)
        head = ["head/.*", "conv_.*"]
    train = {**vocab.encode(train_texts, 8), "label": train_labels}
    test = vocab.encode(test_texts, 8)
    init = model.init(jax.random.PRNGKey(0), test["input_ids"][:1], test["attention_mask"][:1])["params"]

    def accuracy(params):
        logits = model.apply({"params": params}, test["input_ids"], test["attention_mask"])
        return float(np.mean(np.argmax(logits, -1) == test_labels))

    pretrained = with_pretrained_embedding(init, table)
    frozen = _train(model, pretrained, head, train)
    np.testing.assert_array_equal(frozen["embed"]["embedding"], table)  # frozen: bit-identical
    scratch = _train(
        model, init, ["head/.*", "conv_.*", "embed/.*"] if architecture == "cnn" else ["head/.*", "embed/.*"], train
    )
    assert accuracy(frozen) > 0.9
    assert accuracy(scratch) < 0.75  # the unseen words' random embeddings never trained
