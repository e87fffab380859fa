"""The ProxylessNAS space: the published models' sizes, multiply-adds against torch's counter, the
per-(block, operation) table, where zero may go, small images, and clear errors for bad choices."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dfnas.errors import DfnasError
from dfnas.flops import count_macs, count_parameters
from dfnas.spaces import build_architecture, get_space
from dfnas.spaces.proxyless import (
    IMAGENET_SPACE,
    OPS,
    PROXYLESS_GPU,
    PROXYLESS_GPU_ARGS,
    PROXYLESS_MOBILE,
    PROXYLESS_MOBILE_ARGS,
    ZERO,
    ProxylessNet,
    allowed_ops,
    block_layout,
    build_from_arch,
    flops_table,
    random_choices,
)

SMALL = {"in_channels": 1, "num_classes": 10, "stem": 8, "stem_stride": 1, "first": 8, "stage_blocks": (2, 2, 1),
         "widths": (8, 16, 24), "strides": (1, 2, 1), "feature_mix": 64}


def torch_macs(net, shape):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()
        net(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def test_published_models_have_the_published_parameter_counts():
    """ProxylessNAS-GPU has 7,119,848 parameters and ProxylessNAS-Mobile 4,080,512 (ImageNet, 1000
    classes), both matched exactly: each model is its own builder arguments (GPU: stem 40, first block
    24, stages 32, 56, 112, 128, 256, 432, feature mix 1728; Mobile: stem 32, first block 16, stages
    32, 40, 80, 96, 192, 320, feature mix 1280) plus one operation per block, zero where the block vanished."""
    gpu = ProxylessNet(PROXYLESS_GPU, **PROXYLESS_GPU_ARGS)
    mobile = ProxylessNet(PROXYLESS_MOBILE, **PROXYLESS_MOBILE_ARGS)
    assert count_parameters(gpu) == 7_119_848
    assert count_parameters(mobile) == 4_080_512
    assert sum(c == ZERO for c in PROXYLESS_GPU) == 8 and sum(c == ZERO for c in PROXYLESS_MOBILE) == 2


def test_mobile_multiply_adds_match_the_paper_and_torch():
    """ProxylessNAS-Mobile: 320M multiply-adds published; we count 320,427,584 (within 0.5%), exactly
    torch's FlopCounterMode total / 2."""
    mobile = ProxylessNet(PROXYLESS_MOBILE, **PROXYLESS_MOBILE_ARGS)
    macs = count_macs(mobile, (3, 224, 224))
    assert macs == 320_427_584
    assert abs(macs - 320e6) / 320e6 < 0.005
    assert macs == torch_macs(mobile, (3, 224, 224))


def test_flops_table_sums_to_the_network_count():
    table = flops_table(SMALL, (1, 28, 28))
    allowed = allowed_ops(block_layout(**SMALL))
    paths = [random_choices(seed, **SMALL)["ops"] for seed in range(6)]
    paths += [[ops[0] for ops in allowed], [ops[-1] for ops in allowed]]
    for path in paths:
        net = ProxylessNet(path, **SMALL)
        assert table.cost(path) == count_macs(net, (1, 28, 28)) == torch_macs(net, (1, 28, 28))
    lo, hi = table.bounds()
    assert lo == table.cost([ops[0] if ZERO not in ops else ZERO for ops in allowed])
    assert hi == table.cost([5] * len(allowed))  # 7x7_e6 everywhere is the largest


def test_flops_table_of_the_published_mobile_widths():
    # At 32x32 to stay fast: the table's sum is the network's count at any resolution.
    table = flops_table(PROXYLESS_MOBILE_ARGS, (3, 32, 32))
    for path in (PROXYLESS_MOBILE, PROXYLESS_GPU):
        net = ProxylessNet(path, **PROXYLESS_MOBILE_ARGS)
        assert table.cost(path) == count_macs(net, (3, 32, 32))


def test_zero_only_where_the_block_keeps_its_shape():
    supernet = ProxylessNet(None)
    allowed = supernet.allowed
    assert len(allowed) == 21
    with_zero = [b for b, ops in enumerate(allowed) if ZERO in ops]
    # Not the first block of a stage, nor the 80 -> 96 (stride 1) and 192 -> 320 ones: 15 of 21.
    assert with_zero == [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]
    assert all(ops[:6] == tuple(range(6)) for ops in allowed)
    assert [b.residual for b in supernet.blocks] == [ZERO in ops for ops in allowed]
    # A zero block vanishes (output = input); a residual block adds its operation to its input.
    block = supernet.blocks[1].eval()
    x = torch.randn(2, 24, 8, 8)
    assert block(x, ZERO) is x
    torch.testing.assert_close(block(x, 3), x + block.ops["5x5_e6"](x))
    with pytest.raises(ValueError, match="zero is only allowed"):
        ProxylessNet([ZERO] + [0] * 20)
    with pytest.raises(ValueError, match="zero is only allowed"):
        ProxylessNet([0] * 20 + [ZERO])
    # The fixed network holds only the chosen operations.
    fixed = ProxylessNet(PROXYLESS_MOBILE, **PROXYLESS_MOBILE_ARGS)
    assert [list(b.ops) for b in fixed.blocks][:4] == [["5x5_e3"], ["3x3_e3"], [], []]


def test_small_image_supernet_runs_any_path():
    for shape, kwargs in (((1, 28, 28), SMALL), ((3, 32, 32), {**SMALL, "in_channels": 3, "num_classes": 100})):
        net = ProxylessNet(None, **kwargs)
        x = torch.randn(2, *shape)
        paths = [random_choices(seed, **kwargs)["ops"] for seed in range(3)] + [None]
        outs = [net(x, path) for path in paths]
        assert all(o.shape == (2, kwargs["num_classes"]) for o in outs)
    # Only the operations on the path get gradients.
    net = ProxylessNet(None, **SMALL)
    path = [1, ZERO, 4, 2, 0]
    net(torch.randn(2, 1, 28, 28), path).sum().backward()
    for block, choice in zip(net.blocks, path):
        for name, op in block.ops.items():
            assert (op[0].weight.grad is not None) == (name == OPS[choice])


def test_imagenet_space_is_the_default():
    assert block_layout(**IMAGENET_SPACE) == block_layout()
    net = ProxylessNet(None)
    assert net(torch.randn(2, 3, 32, 32), [5] * 21).shape == (2, 1000)


def test_registry_builds_and_draws_architectures():
    space_args = {**SMALL, "stage_blocks": list(SMALL["stage_blocks"])}
    arch = {"space": "proxyless", "space_args": space_args, "choices": random_choices(3, **space_args)}
    net = build_architecture(arch, 1, 28, 10, {"dropout": 0.2})
    assert isinstance(net, ProxylessNet) and net.dropout.p == 0.2
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert arch["choices"] == random_choices(3, **SMALL)
    allowed = allowed_ops(block_layout(**space_args))
    drawn = [random_choices(seed, **space_args)["ops"] for seed in range(40)]
    assert all(c in ops for path in drawn for c, ops in zip(path, allowed))
    assert {path[1] for path in drawn} == set(allowed[1])  # every allowed operation shows up, zero too
    published = {"space": "proxyless", "space_args": PROXYLESS_GPU_ARGS, "choices": {"ops": list(PROXYLESS_GPU)}}
    assert count_parameters(build_architecture(published, 3, 224, 1000, {})) == 7_119_848


@pytest.mark.parametrize("choices, message", [
    ({}, r"choices need 'ops', one operation index \(0\.\.6: 3x3_e3, .*zero\) per searchable block"),
    ({"ops": "01234"}, "choices need 'ops'"),
    ({"ops": [0, 1, "x", 0, 0]}, "choices need 'ops'"),
    ({"ops": [0, 1, 2]}, "3 operations for 5 searchable blocks"),
    ({"ops": [0, 1, 7, 0, 0]}, r"block 2: operation 7 is not one of 0\.\.6"),
    ({"ops": [0, 1, -1, 0, 0]}, r"block 2: operation -1 is not one of 0\.\.6"),
    ({"ops": [0, 1, 6, 0, 0]}, r"block 2: zero is only allowed where stride is 1 and the width is kept "
                               r"\(this block is 8->16, stride 2\)"),
])
def test_bad_choices_are_named(choices, message):
    arch = {"space": "proxyless", "space_args": SMALL, "choices": choices}
    with pytest.raises(DfnasError, match=r"ProxylessNAS architecture: " + message):
        build_from_arch(arch, 1, 28, 10, {})


def small_section(**over):
    from dfnas.config import validate_config

    keys = {k: (list(v) if isinstance(v, tuple) else v) for k, v in SMALL.items() if k not in ("in_channels",
                                                                                                "num_classes")}
    return validate_config({"search": {"proxyless": {**keys, **over}}})["search"]["proxyless"]


def test_the_random_baseline_is_matched_to_the_searchs_cost_target():
    """Uniform per block, drawn again until its multiply-adds are within 10% of the target: by default
    the expected multiply-adds of the uniform supernet, under the flops metric ``hardware.target``."""
    scfg = small_section()
    table = flops_table({**SMALL}, (1, 28, 28))
    uniform = table.base + sum(sum(table.table[b, k].item() for k in ops) / len(ops)
                               for b, ops in enumerate(table.allowed))
    for seed in range(5):
        drawn = get_space("proxyless").random(scfg, seed, (1, 28, 28), 10)
        net = build_architecture(drawn | {"space": "proxyless"}, 1, 28, 10, {})
        macs = drawn["found_by"]["multiply_adds"]
        assert macs == count_macs(net, (1, 28, 28)) and drawn["found_by"]["cost_target"] == pytest.approx(uniform)
        assert abs(macs - uniform) <= 0.1 * uniform
        assert drawn["space_args"]["stage_blocks"] == [2, 2, 1]
    lo, hi = table.bounds()
    small_target = small_section(hardware={"metric": "flops", "target": lo * 1.05}, random_tolerance=0.05)
    drawn = get_space("proxyless").random(small_target, 0, (1, 28, 28), 10)
    assert abs(drawn["found_by"]["multiply_adds"] - lo * 1.05) <= 0.05 * lo * 1.05
    with pytest.raises(DfnasError, match=r"random_tolerance: no architecture within 1% of .*M multiply-adds"):
        get_space("proxyless").random(small_section(hardware={"metric": "flops", "target": hi * 2},
                                                    random_tolerance=0.01), 0, (1, 28, 28), 10)
