"""What every BatchNorm layer sees (dfnas.bnstats): channel moments, their distance from the running
statistics, and the quality stage's BatchNorm distance accumulated over batches."""

import math

import pytest
import torch
from torch import nn

from dfnas.bnstats import BatchNormInputs, MomentAccumulator, moment_distance


def a_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2),
                        nn.Flatten(), nn.Linear(2 * 3 * 3, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        for bn, mean, var in ((net[1], [0.5, -1.0, 0.0], [2.0, 0.5, 1.0]), (net[4], [0.1, 0.2], [1.0, 1.5]),
                              (net[7], [0.0, 0.3, -0.2, 1.0], [0.5, 1.0, 2.0, 0.25])):
            bn.running_mean.copy_(torch.tensor(mean))
            bn.running_var.copy_(torch.tensor(var))
    return net.eval()


def by_hand(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over every dimension but the channels, float64."""
    x = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    return x.mean(1), x.var(1, unbiased=False)


def layer_inputs(net, x):
    with torch.no_grad():
        a1 = net[0](x)
        a2 = net[3](net[2](net[1](a1)))
        a3 = net[6](net[5](net[4](a2)))
    return [a1, a2, a3]


def test_measured_moments_of_image_and_vector_inputs():
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.BatchNorm1d(3 * 5 * 5)).eval()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    with BatchNormInputs(net, torch.float64) as inputs:
        net.double()(x)
    for got, want in zip(inputs.moments[0][:2], by_hand(x)):
        torch.testing.assert_close(got, want)
    v = net[0](x).flatten(1)
    for got, want in zip(inputs.moments[1][:2], by_hand(v)):
        torch.testing.assert_close(got, want)
    assert inputs.moments[0][2] == 4 * 25 and inputs.moments[1][2] == 4
    mean, var = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 4.0])
    bn = nn.BatchNorm1d(2)
    bn.running_mean.copy_(torch.tensor([2.0, 1.0]))  # off by (0, 3); variances off by (0, 3) from (1, 1)
    assert moment_distance(mean, var, bn).item() == pytest.approx(3.0 + 3.0)


def test_accumulated_distance_over_two_batches_is_the_distance_of_their_concatenation():
    net = a_network()
    x1, x2 = torch.randn(4, 2, 5, 5), torch.randn(6, 2, 5, 5) * 2 + 0.5  # unequal sizes and statistics
    with MomentAccumulator(net) as acc:
        for x in (x1, x2):
            net(x)
            acc.add()
    bns = [net[1], net[4], net[7]]
    distances = []
    for inp, bn in zip(layer_inputs(net, torch.cat([x1, x2])), bns):
        mean, var = by_hand(inp)
        distances.append((mean - bn.running_mean.double()).norm() + (var - bn.running_var.double()).norm())
    # Per-sample spatial sums are float32 (no float64 copy of an activation), the rest float64.
    assert acc.mean_distance() == pytest.approx(sum(distances).item() / 3, rel=1e-6)
    assert not net[1]._forward_hooks  # the hooks are gone after the block
    # A single batch is not the same set: its distance differs.
    with MomentAccumulator(net) as single:
        net(x1)
        single.add()
    assert abs(single.mean_distance() - acc.mean_distance()) > 1e-3


def test_distance_is_zero_when_the_inputs_have_the_running_statistics():
    torch.manual_seed(1)
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)).eval()
    x1, x2 = torch.randn(3, 3, 4, 4), torch.randn(5, 3, 4, 4) + 1.0
    both = torch.cat([x1, x2])
    with torch.no_grad():
        for bn, before in ((net[0], lambda: both), (net[2], lambda: net[1](net[0](both)))):  # in order
            mean, var = by_hand(before())
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
    with MomentAccumulator(net) as acc:
        for x in (x1, x2):
            net(x)
            acc.add()
    assert acc.mean_distance() == pytest.approx(0.0, abs=1e-5)
    # Each batch alone is off.
    with BatchNormInputs(net, torch.float64) as inputs:
        net(x1)
    assert all(d.item() > 0.1 for d in inputs.distances())
    assert all(m[0].dtype == torch.float64 and not m[0].requires_grad for m in inputs.moments)


class WithAuxiliary(nn.Module):
    """A network whose auxiliary head (with a BatchNorm) runs in training only, as torchvision's
    GoogLeNet and Inception v3 do."""

    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
        self.aux = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))

    def forward(self, x):
        x = self.main(x)
        return (x, self.aux(x)) if self.training else x


def test_layers_a_pass_does_not_run_are_left_out():
    torch.manual_seed(2)
    net = WithAuxiliary().eval()
    x1, x2 = torch.randn(3, 2, 4, 4), torch.randn(5, 2, 4, 4)
    with MomentAccumulator(net) as acc:
        for x in (x1, x2):
            net(x)
            acc.add()
    with torch.no_grad():
        mean, var = by_hand(net.main[0](torch.cat([x1, x2])))
    bn = net.main[1]
    expected = (mean - bn.running_mean.double()).norm() + (var - bn.running_var.double()).norm()
    assert acc.mean_distance() == pytest.approx(expected.item(), rel=1e-6)


def test_a_network_without_batchnorm_has_no_distance():
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU())
    with MomentAccumulator(net) as acc:
        net(torch.randn(2, 2, 4, 4))
        acc.add()
    assert math.isnan(acc.mean_distance())
