"""Each transferability score against a direct NumPy transcription of its paper's formula, on random data."""

import jax
import numpy as np
import pytest

from jtl.features import h_score, leep, logme, nce


def leep_reference(probs, labels, num_classes):
    n = len(labels)
    joint = np.zeros((num_classes, probs.shape[1]))
    for i in range(n):
        joint[labels[i]] += probs[i] / n
    conditional = joint / joint.sum(0, keepdims=True)
    return np.mean(
        [np.log(sum(conditional[labels[i], z] * probs[i, z] for z in range(probs.shape[1]))) for i in range(n)]
    )


def nce_reference(source_labels, labels):
    n = len(labels)
    score = 0.0
    for z in set(source_labels.tolist()):
        for y in set(labels.tolist()):
            p_yz = np.sum((source_labels == z) & (labels == y)) / n
            if p_yz > 0:
                score += p_yz * np.log(p_yz / (np.sum(source_labels == z) / n))
    return score


def h_score_reference(features, labels):
    f = features - features.mean(0)
    cov_f = np.cov(f, rowvar=False, bias=True)
    g = np.stack([f[labels == y].mean(0) for y in labels])
    cov_g = np.cov(g, rowvar=False, bias=True)
    return np.trace(np.linalg.pinv(cov_f) @ cov_g)


def logme_reference(features, labels, num_classes, max_iterations=100):
    """The evidence of Bayesian linear regression with MacKay's updates, with the matrix inverse and
    determinant written out (no eigendecomposition)."""
    n, d = features.shape
    scores = []
    for k in range(num_classes):
        y = (labels == k).astype(np.float64)
        alpha, beta, _previous = 1.0, 1.0, np.inf
        eig = np.linalg.eigvalsh(features.T @ features)
        for _ in range(max_iterations + 1):
            a_matrix = alpha * np.eye(d) + beta * features.T @ features
            m = beta * np.linalg.solve(a_matrix, features.T @ y)
            gamma = np.sum(beta * eig / (alpha + beta * eig))
            ratio = alpha / beta
            alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((y - features @ m) ** 2)
            if abs(alpha / beta - ratio) <= 1e-3 * ratio:
                break
        a_matrix = alpha * np.eye(d) + beta * features.T @ features
        m = beta * np.linalg.solve(a_matrix, features.T @ y)
        evidence = (
            n / 2 * np.log(beta)
            + d / 2 * np.log(alpha)
            - n / 2 * np.log(2 * np.pi)
            - beta / 2 * np.sum((y - features @ m) ** 2)
            - alpha / 2 * m @ m
            - 0.5 * np.linalg.slogdet(a_matrix)[1]
        )
        scores.append(evidence / n)
    return np.mean(scores)


@pytest.fixture(params=[0, 1, 2])
def data(request):
    rng = np.random.default_rng(request.param)
    n, d, classes = 120, 16, 4
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    features = (centres[labels] * rng.uniform(0.2, 1.0) + rng.normal(size=(n, d))).astype(np.float32)
    logits = rng.normal(size=(n, 7)) + 2 * np.eye(7)[labels * 7 // classes]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return features, labels, classes, probs.astype(np.float32)


def test_leep_matches_formula(data):
    _features, labels, classes, probs = data
    got = jax.jit(leep, static_argnums=2)(probs, labels, classes)
    np.testing.assert_allclose(got, leep_reference(probs.astype(np.float64), labels, classes), rtol=1e-5)


def test_nce_matches_formula(data):
    _, labels, classes, probs = data
    source_labels = probs.argmax(1)
    got = jax.jit(nce, static_argnums=(2, 3))(source_labels, labels, 7, classes)
    np.testing.assert_allclose(got, nce_reference(source_labels, labels), rtol=1e-5, atol=1e-7)


def test_h_score_matches_formula(data):
    features, labels, classes, _ = data
    got = jax.jit(h_score, static_argnums=2)(features, labels, classes)
    np.testing.assert_allclose(got, h_score_reference(features.astype(np.float64), labels), rtol=1e-4)


def test_logme_matches_formula(data):
    features, labels, classes, _ = data
    got = jax.jit(logme, static_argnums=2)(features, labels, classes)
    np.testing.assert_allclose(got, logme_reference(features.astype(np.float64), labels, classes), rtol=1e-4)


def test_scores_prefer_informative_features():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    informative = np.eye(3)[labels] * 3 + rng.normal(size=(200, 3))
    noise = rng.normal(size=(200, 3))
    for score in (logme, h_score):
        assert score(informative, labels, 3) > score(noise, labels, 3)
