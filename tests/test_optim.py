"""Learning-rate schedules and parameter groups (dfnas.optim), by hand."""

import math

import pytest

from dfnas.optim import cosine_lr


def test_lr_schedule_warmup_then_cosine():
    assert cosine_lr(0, 100, 0.1, 10) == pytest.approx(0.01)
    assert cosine_lr(9, 100, 0.1, 10) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 0.1, 10) == pytest.approx(0.1)
    assert cosine_lr(55, 100, 0.1, 10) == pytest.approx(0.05)
    assert cosine_lr(100, 100, 0.1, 10) == pytest.approx(0.0)
    assert cosine_lr(40, 100, 0.2, 0) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.4)))
