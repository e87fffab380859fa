"""Scoring a classifier on batches (dfnas.evaluation): exact counts, a batch-size weighted loss, classes
of soft targets."""

import math

import pytest
import torch
import torch.nn.functional as F

from dfnas.evaluation import evaluate_batches


def test_counts_and_loss_by_hand():
    # The inputs are the logits (6 classes, no ties).
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],   # top-1 class 5 (its label)
                      [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],   # top-5 classes 0..4: label 4 is the 5th
                      [0.5, 1.0, 2.0, 3.0, 4.0, 9.0]])  # label 0 has the lowest logit
    y = torch.tensor([5, 4, 0])
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]  # sizes 2 and 1
    scores = evaluate_batches(lambda v: v, batches, F.cross_entropy)
    assert scores["n"] == 3
    assert scores["top1"] == 1 / 3  # only the first
    assert scores["top5"] == 2 / 3  # the first two
    assert scores["loss"] == pytest.approx(F.cross_entropy(x, y).item())  # weighted by batch size


def test_soft_targets_and_no_batches():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    soft = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    scores = evaluate_batches(lambda v: v, [(logits, soft)], labels_of=lambda t: t.argmax(1))
    assert scores["top1"] == 0.5 and scores["top5"] == 1.0 and math.isnan(scores["loss"])
    empty = evaluate_batches(lambda v: v, [])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("top1", "top5", "loss"))
