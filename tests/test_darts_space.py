"""The DARTS cell space: the published network's size, and our multiply-add count against torch's."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from dfnas.flops import count_macs, count_parameters
from dfnas.spaces.darts import DARTS_V2, PRIMITIVES, DartsNetwork, genotype_from_dict, genotype_to_dict


def test_darts_v2_has_the_published_3_3m_parameters():
    net = DartsNetwork(DARTS_V2, in_channels=3, resolution=32, num_classes=10, cells=20, channels=36, auxiliary=True)
    # DARTS (Liu et al. 2019), Table 1: 3.3M parameters, auxiliary head excluded.
    assert abs(count_parameters(net, exclude="aux_head") - 3.3e6) < 0.05e6
    assert count_parameters(net, exclude="aux_head") == 3_349_342


def test_macs_match_torch_flop_counter():
    net = DartsNetwork(DARTS_V2, in_channels=3, resolution=32, num_classes=10, cells=20, channels=36).eval()
    ours = count_macs(net, (3, 32, 32))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    assert ours == counter.get_total_flops() // 2
    assert 0.5e9 < ours < 0.6e9  # DARTS-V2 at CIFAR size: about 0.55 G multiply-adds


def test_small_images_and_one_channel():
    net = DartsNetwork(DARTS_V2, in_channels=1, resolution=28, num_classes=10, cells=8, channels=16, auxiliary=True)
    net.train()
    logits, aux = net(torch.randn(2, 1, 28, 28))
    assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_genotype_round_trips_through_json():
    d = genotype_to_dict(DARTS_V2)
    assert genotype_from_dict(d) == DARTS_V2
    assert all(op in PRIMITIVES and op != "none" for op, _ in DARTS_V2.normal + DARTS_V2.reduce)
