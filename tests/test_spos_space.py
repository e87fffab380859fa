"""The SPOS ShuffleNetV2 one-shot space: the published architecture's size, the supernet's paths."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from dfnas.flops import count_macs, count_parameters
from dfnas.spaces.shufflenet import SPOS_IMAGENET, ShuffleNetOneShot


def test_published_spos_architecture_size():
    net = ShuffleNetOneShot(SPOS_IMAGENET)
    # SPOS (Guo et al. 2020), block search on ImageNet: 323M FLOPs (multiply-adds), 3.5M parameters.
    # Each stride-2 block projects with its choice's kernel (the path has 5x5, 7x7 and 3x3 first blocks).
    macs = count_macs(net, (3, 224, 224))
    assert macs == 322_918_720 and abs(macs - 323e6) / 323e6 < 0.002
    assert count_parameters(net) == 3_558_464 and abs(count_parameters(net) - 3.5e6) < 0.1e6
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()
        net(torch.zeros(1, 3, 224, 224))
    assert macs == counter.get_total_flops() // 2


def test_supernet_runs_any_path_and_small_images():
    net = ShuffleNetOneShot(None, in_channels=1, num_classes=10, stem=8, stem_stride=1, stage_blocks=(2, 2, 2),
                            widths=(16, 32, 64), last_conv=128)
    x = torch.randn(2, 1, 28, 28)
    outs = {path: net(x, path) for path in [(0,) * 6, (3,) * 6, (1, 2, 3, 0, 1, 2)]}
    assert all(o.shape == (2, 10) for o in outs.values())
    assert not torch.allclose(outs[(0,) * 6], outs[(3,) * 6])
    # Only the chosen branches get gradients.
    net.zero_grad()
    net(x, (0,) * 6).sum().backward()
    assert net.blocks[1].branches[0][0].weight.grad is not None
    assert net.blocks[1].branches[3][0].weight.grad is None


def test_flops_table_sums_to_the_network_count():
    from dfnas.spaces.shufflenet import flops_table, sample_path

    kwargs = {"in_channels": 1, "num_classes": 10, "stem": 8, "stem_stride": 1, "stage_blocks": (2, 2, 2),
              "widths": (16, 32, 64), "last_conv": 128}
    table = flops_table(kwargs, (1, 28, 28))
    gen = torch.Generator().manual_seed(0)
    for path in [(0,) * 6, (3,) * 6, (1, 2, 3, 0, 1, 2)]:
        assert table.cost(path) == count_macs(ShuffleNetOneShot(path, **kwargs), (1, 28, 28))
    lo, hi = table.bounds()
    mid = (lo + hi) / 2
    paths = [sample_path(table, gen, low=mid, high=hi) for _ in range(50)]
    assert all(mid <= table.cost(p) <= hi for p in paths)
    # Within bins, draws land in every bin about equally often.
    binned = [sample_path(table, gen, bins=2) for _ in range(200)]
    low_half = sum(table.cost(p) < mid for p in binned)
    assert 70 < low_half < 130


def test_imagenet_flops_table_matches_the_published_path():
    from dfnas.spaces.shufflenet import flops_table

    table = flops_table({}, (3, 224, 224))
    assert table.cost(SPOS_IMAGENET) == count_macs(ShuffleNetOneShot(SPOS_IMAGENET), (3, 224, 224))


def test_a_stride_2_block_projects_with_the_kernel_of_its_choice():
    net = ShuffleNetOneShot(None, in_channels=1, num_classes=10, stem=8, stem_stride=1, stage_blocks=(1, 1),
                            widths=(16, 32), last_conv=32)
    first = net.blocks[0]
    kernels = [proj[0].kernel_size for proj in first.projs]
    assert kernels == [(3, 3), (5, 5), (7, 7), (3, 3)] and all(p[0].stride == (2, 2) for p in first.projs)
    x = torch.randn(2, 8, 8, 8)
    first.eval()
    out = first(x, 1)
    assert torch.equal(out[:, :8], first.projs[1](x))  # the 5x5 choice's own projection
    assert first.projs[1][0].weight.grad is None
    first(x, 1).sum().backward()
    assert first.projs[1][0].weight.grad is not None and first.projs[0][0].weight.grad is None
