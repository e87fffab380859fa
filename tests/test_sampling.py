"""Class-balanced sampling of indices (dfnas.sampling)."""

import numpy as np

from dfnas.sampling import per_class_pick, stratified_split, stratified_subset

# Classes 7, 2 and 5 with 6, 3 and 8 members, interleaved.
LABELS = np.array([7, 2, 5, 7, 5, 5, 2, 7, 5, 7, 5, 2, 5, 7, 5, 7, 5])


def test_stratified_split_keeps_k_per_class():
    labels = np.repeat(np.arange(4), 10)
    train, val = stratified_split(labels, 3, seed=0)
    assert np.bincount(labels[val]).tolist() == [3, 3, 3, 3]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 40
    assert np.array_equal(val, stratified_split(labels, 3, seed=0)[1])


def test_per_class_pick_takes_each_class_quota():
    ranks = []

    def quota(k, size):
        ranks.append((k, size))
        return k + 1  # class rank 0 (label 2): one, rank 1 (label 5): two, rank 2 (label 7): three

    idx = per_class_pick(LABELS, quota, seed=0)
    assert ranks == [(0, 3), (1, 8), (2, 6)]  # ranks over the sorted classes, with their sizes
    assert [int((LABELS[idx] == c).sum()) for c in (2, 5, 7)] == [1, 2, 3]
    assert list(idx) == sorted(idx) and len(set(idx.tolist())) == 6
    assert np.array_equal(idx, per_class_pick(LABELS, lambda k, size: k + 1, seed=0))
    draws = {tuple(per_class_pick(LABELS, lambda k, size: k + 1, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed picks the members
    # A quota beyond a class's size takes the whole class.
    assert np.array_equal(per_class_pick(LABELS, lambda k, size: 100, seed=0), np.arange(len(LABELS)))
    assert len(per_class_pick([], lambda k, size: 1, seed=0)) == 0


def test_stratified_subset_counts():
    idx = stratified_subset(LABELS, 7, seed=1)
    # 7 of 3 classes: 3, 2, 2 (the first 7 % 3 classes one more).
    assert [int((LABELS[idx] == c).sum()) for c in (2, 5, 7)] == [3, 2, 2]
    assert np.array_equal(stratified_subset(LABELS, 17, seed=1), np.arange(17))
    assert np.array_equal(stratified_subset(LABELS, None, seed=1), np.arange(17))


def test_stratified_split_leaves_small_classes_training_images():
    train, val = stratified_split(LABELS, 2, seed=0)
    # Label 2 has 3 members: only 3 // 2 = 1 goes to validation; the others give 2.
    assert [int((LABELS[val] == c).sum()) for c in (2, 5, 7)] == [1, 2, 2]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(17))
