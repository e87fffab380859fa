"""Class-balanced sampling of indices (dfnas.sampling)."""

import numpy as np

from dfnas.sampling import stratified_split


def test_stratified_split_keeps_k_per_class():
    labels = np.repeat(np.arange(4), 10)
    train, val = stratified_split(labels, 3, seed=0)
    assert np.bincount(labels[val]).tolist() == [3, 3, 3, 3]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 40
    assert np.array_equal(val, stratified_split(labels, 3, seed=0)[1])
