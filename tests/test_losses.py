"""Losses against soft targets (dfnas.losses), by hand."""

import pytest
import torch

from dfnas.losses import kd_loss


def test_kd_loss_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    p = torch.softmax(t / 2, 1)
    q = torch.log_softmax(s / 2, 1)
    expected = 4 * (p * (p.log() - q)).sum()
    assert kd_loss(s, t, 2.0).item() == pytest.approx(expected.item())
    assert kd_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-6)
