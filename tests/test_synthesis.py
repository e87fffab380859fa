"""Synthesis (dfnas.synthesis, with the crops of dfnas.imaging): the objective's terms against hand
computations, and the regional update's views."""

import itertools

import pytest
import torch
from torch import nn

from dfnas.bnstats import BatchNormMatch
from dfnas.imaging import Normalize, crop_resize
from dfnas.synthesis import Objective, Region, Schedule, l2_prior, synthesize_batch, synthesize_stacked, tv_losses

# ---------------------------------------------------------------------------------------------
# Objective terms


def bn_network() -> nn.Sequential:
    """Image and vector BatchNorm layers with set running statistics, float64, eval mode."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3),
                        nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4)).double()
    net[1].running_mean.copy_(torch.tensor([0.5, -1.0]))
    net[1].running_var.copy_(torch.tensor([2.0, 0.5]))
    net[4].running_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
    net[4].running_var.copy_(torch.tensor([1.0, 1.5, 0.25]))
    net[7].running_mean.copy_(torch.tensor([0.0, 0.3, -0.2, 1.0]))
    net[7].running_var.copy_(torch.tensor([0.5, 1.0, 2.0, 0.25]))
    return net.eval()


def bn_term_by_hand(net, x):
    """The per-layer formula (mean and biased variance by autograd's own operations)."""
    def term(inp, bn):
        dims = (0, 2, 3) if inp.ndim == 4 else (0,)
        mu = inp.mean(dim=dims)
        var = ((inp - mu.view(1, -1, *[1] * (inp.ndim - 2))) ** 2).mean(dim=dims)
        return ((mu - bn.running_mean) ** 2).sum().sqrt() + ((var - bn.running_var) ** 2).sum().sqrt()

    a1 = net[0](x)
    a2 = net[3](net[2](net[1](a1)))
    a3 = net[6](net[5](net[4](a2)))
    return 10.0 * term(a1, net[1]) + term(a2, net[4]) + term(a3, net[7])


def test_bn_loss_and_its_gradient_against_a_hand_computation():
    """The fused term (one var_mean per layer forward, one addcmul backward) equals the per-layer
    formula in value and in gradient, image and vector BatchNorm layers alike."""
    torch.manual_seed(0)
    net = bn_network()
    x = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    with BatchNormMatch(net, first_multiplier=10.0) as bn:
        net(x)
        loss = bn.loss()
    fused, = torch.autograd.grad(loss, x)
    expected = bn_term_by_hand(net, x)
    by_hand, = torch.autograd.grad(expected, x)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the moments are float32
    torch.testing.assert_close(fused, by_hand, rtol=1e-5, atol=1e-7)
    # The hooks are gone after the block, and no activation is kept.
    assert not net[1]._forward_hooks and bn.inputs == [None] * 3


@pytest.mark.parametrize("spatial_sums", [True, False])
@pytest.mark.parametrize("sizes", [(3, 3, 3), (3, 3, 2, 2, 4)])
def test_grouped_bn_loss_is_the_sum_over_the_groups(monkeypatch, spatial_sums, sizes):
    """With groups (stacked batches: equal ones measured by splitting the batch, unequal runs by
    slicing), the term and its gradient are the sum of each group's own term by hand, on both ways
    of measuring moments (CPU spatial sums, the GPU's var_mean)."""
    from dfnas import bnstats

    monkeypatch.setattr(bnstats, "SPATIAL_SUMS_ON_CPU", spatial_sums)
    torch.manual_seed(0)
    net = bn_network()
    x = torch.randn(sum(sizes), 1, 3, 3, dtype=torch.float64, requires_grad=True)
    bounds = [0, *itertools.accumulate(sizes)]
    groups = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    with BatchNormMatch(net, first_multiplier=10.0) as bn:
        net(x)
        loss = bn.loss(groups)
    fused, = torch.autograd.grad(loss, x)
    expected = sum(bn_term_by_hand(net, x[g]) for g in groups)
    by_hand, = torch.autograd.grad(expected, x)
    assert bnstats.equal_runs(groups) == ([(0, 9, 3)] if len(sizes) == 3 else [(0, 6, 2), (6, 10, 2), (10, 14, 1)])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(fused, by_hand, rtol=1e-5, atol=1e-7)
    whole = bn_term_by_hand(net, x)  # one batch of all the images is another objective
    assert abs(whole.item() - expected.item()) > 0.1


def test_bn_loss_in_bfloat16_keeps_float32_statistics():
    """Under CPU autocast the network's activations are bfloat16; the term is measured in float32
    and agrees with the float32 run within bfloat16's rounding of the activations (1%)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)).eval()
    x = torch.randn(8, 3, 12, 12)
    with BatchNormMatch(net) as bn:
        net(x)
        fp32 = bn.loss()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)
        assert bn.inputs[1].dtype == torch.bfloat16
        bf16 = bn.loss()
    assert bf16.dtype == torch.float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.01)


def test_tv_and_l2_against_hand_values():
    x = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    # right: (1-2, 4-8) = (-1, -4); down: (1-4, 2-8) = (-3, -6); diagonals: (4-2) = 2 and (1-8) = -7
    tv2, tv1 = tv_losses(x)
    assert tv2.item() == pytest.approx(17 ** 0.5 + 45 ** 0.5 + 2 + 7)
    assert tv1.item() == pytest.approx(2.5 + 4.5 + 2 + 7)
    assert l2_prior(torch.stack([x[0], 2 * x[0]])).item() == pytest.approx(1.5 * 85 ** 0.5)


def test_regional_update_gives_zero_gradient_outside_the_box():
    x = torch.randn(1, 2, 16, 16, requires_grad=True)
    box = torch.tensor([[0.25, 0.5, 0.5, 0.25]])  # rows 4..11, columns 8..11
    v = crop_resize(x, box, torch.tensor([True]), (16, 16))
    v.pow(2).sum().backward()
    grad = x.grad[0].abs().sum(0)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 8:12] = True
    assert grad[~inside].max().item() == 0.0
    assert (grad[inside] > 0).all()


def test_crop_resize_identity_and_flip():
    x = torch.randn(2, 3, 8, 8)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    assert torch.allclose(crop_resize(x, full, torch.tensor([False, False]), (8, 8)), x, atol=1e-6)
    flipped = crop_resize(x, full, torch.tensor([True, False]), (8, 8))
    assert torch.allclose(flipped[0], x[0].flip(2), atol=1e-6) and torch.allclose(flipped[1], x[1], atol=1e-6)


def test_region_modes_keep_the_shape():
    x = torch.randn(4, 1, 10, 10)
    gen = torch.Generator().manual_seed(0)
    for mode in ("resized_crop", "jitter", "none"):
        assert Region(mode=mode).view(x, gen).shape == x.shape
    rolled = Region(mode="jitter", jitter=0, flip=False).view(x, gen)
    assert torch.equal(rolled, x)


def test_jitter_is_halved_at_half_resolution_when_asked():
    """DeepInversion rolls by up to jitter // 2 pixels at half resolution (``halve_jitter``)."""
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16)

    def shifts(region, half):
        gen, found = torch.Generator().manual_seed(0), set()
        for _ in range(200):
            v = region.view(x, gen, half)
            found |= {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                      if torch.equal(v, torch.roll(x, shifts=(dy, dx), dims=(2, 3)))}
        return max(max(abs(dy), abs(dx)) for dy, dx in found)

    halving = Region(mode="jitter", jitter=4, flip=False, halve_jitter=True)
    assert shifts(halving, half=True) == 2 and shifts(halving, half=False) == 4
    assert shifts(Region(mode="jitter", jitter=4, flip=False), half=True) == 4


# ---------------------------------------------------------------------------------------------
# One batch: the two resolution stages and the pixel range


def run_batch(teacher, schedule, seen=None):
    """`synthesize_batch` of 4 images on the test teacher; ``seen`` collects the teacher's input shapes."""
    hook = teacher.model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:]))) \
        if seen is not None else None
    targets = torch.eye(10)[[0, 1, 2, 3]]
    try:
        return synthesize_batch(teacher.model, targets, (1, 28, 28), teacher.mean, teacher.std, Objective(), schedule,
                                Region(mode="none", flip=False), torch.Generator().manual_seed(0))
    finally:
        if hook:
            hook.remove()


def test_the_half_resolution_stage_comes_first_at_half_size(teacher):
    seen = []
    run_batch(teacher, Schedule(iterations_half=2, iterations_full=3, warmup=0), seen)
    assert seen == [(14, 14)] * 2 + [(28, 28)] * 3
    seen.clear()
    run_batch(teacher, Schedule(iterations_half=0, iterations_full=2, warmup=0), seen)
    assert seen == [(28, 28)] * 2


@pytest.mark.parametrize("last", [[1, 3, 5], [1, 3, 5, 7, 9]])
def test_stacked_batches_equal_batches_run_in_turn(teacher, last):
    """Three batches (5, 5 and 3 images: a run of two equal groups and one of another size; or three
    of 5: the batch split in three) in one teacher pass a step, with resized crops, flips, both
    stages, every prior and a warm start for one: the images of each equal `synthesize_batch` on
    that batch in turn with the same generator, and the per-batch objective is not the stacked
    batch's (the images optimized as one batch end elsewhere)."""
    targets = [torch.eye(10)[[0, 1, 2, 3, 4]], torch.eye(10)[[5, 6, 7, 8, 9]], torch.eye(10)[last]]
    warm = [None, None, torch.randn(len(last), 1, 28, 28, generator=torch.Generator().manual_seed(9))]
    args = ((1, 28, 28), teacher.mean, teacher.std, Objective(tv_l1=1e-3), Schedule(iterations_half=3, iterations_full=4, warmup=1),
            Region(mode="resized_crop", flip=True))
    gen = torch.Generator().manual_seed(4)
    alone = [synthesize_batch(teacher.model, t, *args, gen, init=i).images for t, i in zip(targets, warm)]
    stacked = [r.images for r in synthesize_stacked(teacher.model, targets, *args, torch.Generator().manual_seed(4), warm)]
    for a, b in zip(alone, stacked):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-3 and (a - b).abs().mean() < 1e-6, (a - b).abs().max()
    assert torch.equal(gen.get_state(), _after(targets, warm))  # the same draws were taken
    one = synthesize_batch(teacher.model, torch.cat(targets), *args, torch.Generator().manual_seed(4)).images
    assert (one[:5] - alone[0]).abs().max() > 1e-2


def _after(targets, warm) -> torch.Tensor:
    """The generator's state after the stacked run's draws."""
    gen = torch.Generator().manual_seed(4)
    region, schedule = Region(mode="resized_crop", flip=True), Schedule(iterations_half=3, iterations_full=4)
    for t, init in zip(targets, warm):
        if init is None:
            torch.randn(t.shape[0], 1, 28, 28, generator=gen)
        for half, iterations in schedule.stages():
            region.draw(t.shape[0], iterations, gen, half)
    return gen.get_state()


def test_pixels_stay_in_the_valid_range_after_every_step(teacher):
    """A large learning rate pushes pixels past the range of [0, 1] images; every step clips them back,
    so the result sits inside it and some pixels sit on its edges."""
    lo, hi = Normalize(teacher.mean, teacher.std).bounds()
    x = run_batch(teacher, Schedule(iterations_half=0, iterations_full=3, lr=5.0, warmup=0)).images
    assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6
    on_edge = ((x - lo).abs() < 1e-6) | ((x - hi).abs() < 1e-6)
    assert on_edge.float().mean() > 0.1


# ---------------------------------------------------------------------------------------------
# Launches: a synthesis step costs at most two bare teacher passes in operations


def test_a_synthesis_step_costs_at_most_twice_the_operations_of_a_bare_pass(monkeypatch):
    """Counted along the path a GPU takes (one var_mean per BatchNorm input), one step (two
    iterations minus one) of synthesis from a ResNet-50 (53 BatchNorm layers) against a bare forward
    + backward, at 32 px to keep it quick: the count does not depend on the size (the benchmark,
    benchmarks/synthesis_step.py --count-ops, uses 224 px). Before the fused BatchNorm term it was
    about 7 times."""
    import torch.nn.functional as F

    from dfnas import bnstats
    from dfnas.models import build_model
    from dfnas.opcount import OpCounter

    monkeypatch.setattr(bnstats, "SPATIAL_SUMS_ON_CPU", False)
    teacher = build_model("torchvision:resnet50", num_classes=10).eval().requires_grad_(False)
    targets = torch.eye(10)[[0, 1]]

    def synthesis(iterations):
        with OpCounter() as ops:
            synthesize_batch(teacher, targets, (3, 32, 32), [0.5] * 3, [0.5] * 3, Objective(),
                             Schedule(iterations_half=0, iterations_full=iterations, warmup=1), Region(),
                             torch.Generator().manual_seed(0))
        return ops.total

    step = synthesis(2) - synthesis(1)
    with OpCounter() as bare:
        F.cross_entropy(teacher(torch.randn(2, 3, 32, 32, requires_grad=True)), targets.argmax(1)).backward()
    assert bare.total > 300 and step <= 2.0 * bare.total, (step, bare.total)


def test_views_drawn_for_a_stage_are_the_views_drawn_step_by_step():
    """A stage's views, drawn at once, are those a step-by-step draw gives (flips, then the box or
    the roll, per step): the same seed keeps giving the same images."""
    from dfnas.imaging import random_boxes

    def one_step(region, x, gen):
        flips = torch.rand(x.shape[0], generator=gen) < 0.5
        if region.mode == "resized_crop":
            return crop_resize(x, random_boxes(x.shape[0], region.scale, region.ratio, gen), flips, x.shape[-2:])
        if region.mode == "jitter":
            dy, dx = (int(v) for v in torch.randint(-region.jitter, region.jitter + 1, (2,), generator=gen))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return torch.where(flips[:, None, None, None], x.flip(3), x)

    x = torch.randn(3, 1, 12, 12)
    for region in (Region(), Region(mode="jitter", jitter=3), Region(mode="none")):
        at_once = region.draw(3, 4, torch.Generator().manual_seed(5))
        gen = torch.Generator().manual_seed(5)
        for step in range(4):
            assert torch.equal(at_once.apply(x, step), one_step(region, x, gen))
