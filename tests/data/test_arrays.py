"""The training stream: epochs are permutations, hosts split global batches, and the state resumes exactly."""

import numpy as np

from jtl import data


def source(size: int) -> data.ArraySource:
    return data.ArraySource(np.arange(size, dtype=np.float32)[:, None], np.arange(size))


def test_every_epoch_is_a_permutation_and_epochs_differ():
    batches = data.train_batches(source(10), 5, seed=3)
    epochs = [np.concatenate([next(batches)["label"] for _ in range(2)]) for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(10))
    assert not all((epochs[0] == other).all() for other in epochs[1:])


def test_hosts_read_disjoint_rows_of_the_same_global_batches():
    single = data.train_batches(source(12), 4, seed=0)
    hosts = [data.train_batches(source(12), 2, seed=0, process_index=i, process_count=2) for i in range(2)]
    for _ in range(5):
        joined = np.concatenate([next(host)["label"] for host in hosts])
        np.testing.assert_array_equal(joined, next(single)["label"])


def test_a_restored_state_continues_exactly_with_transforms():
    def jitter(example, rng):
        return {"image": example["image"] + rng.normal(size=1).astype(np.float32), "label": example["label"]}

    batches = data.train_batches(source(7), 3, seed=1, transform=jitter)
    for _ in range(4):
        next(batches)
    state = batches.get_state()
    expected = [next(batches) for _ in range(3)]
    resumed = data.train_batches(source(7), 3, seed=1, transform=jitter)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_array_equal(got["image"], want["image"])
