"""Learning-rate schedules and parameter groups (dfnas.optim), by hand."""

import math

import pytest
import torch
from torch import nn

from dfnas.optim import cosine_lr, decay_groups, linear_lr, scheduled_lr, set_lr


def test_lr_schedule_warmup_then_cosine():
    assert cosine_lr(0, 100, 0.1, 10) == pytest.approx(0.01)
    assert cosine_lr(9, 100, 0.1, 10) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 0.1, 10) == pytest.approx(0.1)
    assert cosine_lr(55, 100, 0.1, 10) == pytest.approx(0.05)
    assert cosine_lr(100, 100, 0.1, 10) == pytest.approx(0.0)
    assert cosine_lr(40, 100, 0.2, 0) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.4)))


def test_cosine_lr_warmup_and_minimum_by_hand():
    # Two warm-up steps to 1.0, then cosine from 1.0 to 0.1 over the remaining 8 steps.
    lrs = [cosine_lr(step, 10, 1.0, warmup=2, minimum=0.1) for step in range(12)]
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[6] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))  # half-way: 0.55
    assert lrs[4] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.25)))
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)  # the minimum, and after the end
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # never rises after the warm-up
    assert cosine_lr(0, 0, 0.3) == pytest.approx(0.3)  # an empty schedule does not divide by zero


def test_linear_lr_by_hand():
    assert [linear_lr(step, 10, 0.5) for step in (0, 4, 9, 10, 12)] == pytest.approx([0.5, 0.3, 0.05, 0.0, 0.0])


def test_decay_groups_leave_one_dimensional_parameters_undecayed():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    decay, no_decay = decay_groups(model, 0.5)
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model[0].weight), id(model[3].weight)]
    assert [id(p) for p in no_decay["params"]] == [id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[3].bias)]
    # With zero gradients an SGD step only shrinks the decayed weights: w <- w - lr * wd * w.
    opt = torch.optim.SGD(decay_groups(model, 0.5), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for (name, p), old in zip(model.named_parameters(), before):
        expected = old * 0.95 if name.endswith("weight") and p.ndim > 1 else old
        torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("no_decay, exempt", [
    ("none", []),  # DARTS: every parameter decays
    ("norm", ["1.weight", "1.bias"]),  # ProxylessNAS: BatchNorm's; the convolution's and classifier's biases decay
    ("norm_and_bias", ["0.bias", "1.weight", "1.bias", "3.bias"]),  # SPOS: every 1-d tensor
])
def test_decay_groups_exempt_what_each_protocol_exempts(no_decay, exempt):
    """One SGD step on zero gradients with lr 0.1 and weight decay 0.5 multiplies each decayed
    parameter by 0.95 and leaves the exempt ones as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(0.5, 1.5)
    opt = torch.optim.SGD(decay_groups(model, 0.5, no_decay), lr=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] * (1.0 if name in exempt else 0.95), msg=name)
    with pytest.raises(ValueError, match="no_decay is one of"):
        decay_groups(model, 0.5, "bn")


def test_scheduled_lr_linear_and_cosine_by_hand():
    # Two warm-up steps to 1.0, then linear decay to 0 at step 10 over the remaining 8.
    lrs = [scheduled_lr("linear", step, 10, 1.0, warmup=2) for step in range(12)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0])
    assert [scheduled_lr("cosine", k, 10, 1.0, 2) for k in range(12)] == [cosine_lr(k, 10, 1.0, 2) for k in range(12)]
    with pytest.raises(ValueError, match="schedule is cosine or linear, not 'step'"):
        scheduled_lr("step", 0, 10, 1.0)


def test_set_lr_sets_every_group():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(decay_groups(model, 1e-4), lr=0.1)
    set_lr(opt, 0.025)
    assert [g["lr"] for g in opt.param_groups] == [0.025, 0.025]
