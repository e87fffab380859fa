"""Losses against soft targets (dfnas.losses), by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from dfnas.losses import kd_loss, soft_cross_entropy


def test_kd_loss_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    p = torch.softmax(t / 2, 1)
    q = torch.log_softmax(s / 2, 1)
    expected = 4 * (p * (p.log() - q)).sum()
    assert kd_loss(s, t, 2.0).item() == pytest.approx(expected.item())
    assert kd_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_is_a_batch_mean():
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 2.0], [0.0, 0.0]])  # the second row agrees: it adds nothing but counts
    assert kd_loss(s, t, 2.0).item() == pytest.approx(kd_loss(s[:1], t[:1], 2.0).item() / 2)


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]])
    targets = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    # Row 0: uniform against uniform, ln 4. Row 1: -log softmax = -log(3 / 6) = ln 2.
    assert soft_cross_entropy(logits, targets).item() == pytest.approx((math.log(4) + math.log(2)) / 2)
    labels = torch.tensor([2, 0])
    one_hot = F.one_hot(labels, 4).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(F.cross_entropy(logits, labels).item())
