import jax.numpy as jnp
import pytest

import jtl.masking as jm

PARAMS = {
    "embed": {"kernel": jnp.ones((2, 2))},
    "encoder": {"block_0": {"kernel": jnp.ones((2, 2))}, "block_1": {"kernel": jnp.ones((2, 2))}},
    "head": {"bias": jnp.ones(2), "kernel": jnp.ones((2, 2))},
}


def test_first_matching_rule_wins():
    labels = jm.label_by_rules(PARAMS, [("head/.*", "a"), (".*/kernel", "b"), (".*", "c")])
    assert labels == {
        "embed": {"kernel": "b"},
        "encoder": {"block_0": {"kernel": "b"}, "block_1": {"kernel": "b"}},
        "head": {"bias": "a", "kernel": "a"},
    }


def test_rules_fullmatch_rather_than_search():
    # "kernel" alone must not match "embed/kernel": a partial match would freeze more than asked.
    with pytest.raises(jm.MaskingError, match=r"rule 0 \('kernel'"):
        jm.label_by_rules(PARAMS, [("kernel", "x"), (".*", "y")])


def test_uncovered_leaves_are_listed():
    with pytest.raises(
        jm.MaskingError, match=r"no rule covers these leaves: \['embed/kernel', 'encoder/block_0/kernel'"
    ):
        jm.label_by_rules(PARAMS, [("head/.*", "train"), ("encoder/block_1/.*", "train")])


def test_default_label_covers_the_rest():
    labels = jm.label_by_rules(PARAMS, [("head/.*", "train")], default="frozen")
    assert labels["embed"]["kernel"] == "frozen" and labels["head"]["bias"] == "train"


def test_rule_that_matches_nothing_is_an_error_naming_it():
    with pytest.raises(jm.MaskingError, match=r"rule 0 \('haed/.\*' -> 'train'\) matches no leaf"):
        jm.label_by_rules(PARAMS, [("haed/.*", "train"), (".*", "frozen")])


def test_rule_that_matches_nothing_may_be_allowed():
    labels = jm.label_by_rules(PARAMS, [("haed/.*", "train"), (".*", "frozen")], allow_unused=True)
    assert set(jm.named_leaves(labels)[i][1] for i in range(5)) == {"frozen"}


def test_shadowed_rule_is_an_error_naming_the_leaf_taken_earlier():
    with pytest.raises(jm.MaskingError, match=r"rule 1 \('head/.\*'.*taken by an earlier rule"):
        jm.label_by_rules(PARAMS, [(".*", "frozen"), ("head/.*", "train")])


def test_spare_final_catch_all_is_allowed():
    labels = jm.label_by_rules(PARAMS, [("head/.*", "a"), (".*", "b"), (".*", "c")], allow_unused=False)
    assert labels["head"]["bias"] == "a"


def test_invalid_regex_names_the_rule():
    with pytest.raises(jm.MaskingError, match=r"rule 1: invalid regex 'head/\('"):
        jm.label_by_rules(PARAMS, [(".*", "x"), ("head/(", "y")])


def test_select_and_unused_patterns():
    mask = jm.select(PARAMS, ["head/.*", "embed/.*"])
    assert mask["head"]["kernel"] and mask["embed"]["kernel"] and not mask["encoder"]["block_0"]["kernel"]
    with pytest.raises(jm.MaskingError, match=r"\['encoder/block_9/.\*'\]"):
        jm.select(PARAMS, ["head/.*", "encoder/block_9/.*"])


def test_mask_with_wrong_structure_names_the_paths():
    bad = {"embed": {"kernel": True}, "head": {"bias": True, "kernel": False, "extra": True}}
    with pytest.raises(jm.MaskingError) as err:
        jm.trainable_mask(PARAMS, trainable=bad)
    message = str(err.value)
    assert "the mask does not fit the params" in message
    assert "'encoder/block_0/kernel'" in message and "'encoder/block_1/kernel'" in message
    assert "unexpected leaves ['head/extra']" in message


def test_mask_leaves_must_be_static_bools():
    mask = {
        "embed": {"kernel": jnp.array(True)},
        "encoder": {"block_0": {"kernel": True}, "block_1": {"kernel": True}},
        "head": {"bias": True, "kernel": True},
    }
    with pytest.raises(jm.MaskingError, match=r"Python bools.*embed/kernel"):
        jm.trainable_mask(PARAMS, trainable=mask)


def test_exactly_one_of_trainable_and_frozen():
    with pytest.raises(jm.MaskingError, match=r"exactly one"):
        jm.trainable_mask(PARAMS, trainable="head/.*", frozen="embed/.*")
    with pytest.raises(jm.MaskingError, match=r"exactly one"):
        jm.trainable_mask(PARAMS)


def test_frozen_spec_inverts():
    assert jm.trainable_mask(PARAMS, frozen=["embed/.*", "encoder/.*"]) == jm.trainable_mask(
        PARAMS, trainable="head/.*"
    )
