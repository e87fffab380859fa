"""The DARTS strategy: second-order architecture gradient against an exact computation, genotypes,
and a search that resumes after a kill."""

import math
import shutil

import h5py
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import EPOCH_1_DONE, Killed, assert_resumes_after_a_kill, quiet
from dfnas.config import validate_config
from dfnas.search_data import SearchData
from dfnas.spaces.darts import PRIMITIVES, SearchNetwork, derive_genotype
from dfnas.strategies import darts, get_strategy
from dfnas.strategies.darts import Architect


def tiny_forward(x, w1, w2, alpha):
    p = F.softmax(alpha, dim=0)
    return p[0] * torch.tanh(x @ w1.T) + p[1] * (x @ w2.T) + p[2] * torch.sigmoid(x @ w1.T) * 2


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.alpha = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))

    def weight_parameters(self):
        return [self.w1, self.w2]

    def arch_parameters(self):
        return [self.alpha]

    def forward(self, x):
        return tiny_forward(x, self.w1, self.w2, self.alpha)


def loss_fn(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def test_second_order_gradient_matches_the_exact_unrolled_gradient():
    g = torch.Generator().manual_seed(1)
    train = (torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
    val = (torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
    model = Tiny()
    xi, wd = 0.1, 3e-4
    architect = Architect(model, loss_fn, order=2, network_weight_decay=wd)
    _, approx = architect.unrolled_gradient(train, val, xi)

    # Exact: differentiate L_val(w - xi * (dL_train/dw + wd * w), alpha) through the inner step.
    alpha = model.alpha.detach().clone().requires_grad_(True)
    w = [model.w1.detach(), model.w2.detach()]
    w_req = [t.clone().requires_grad_(True) for t in w]
    inner = F.cross_entropy(tiny_forward(train[0], *w_req, alpha), train[1])
    grads = torch.autograd.grad(inner, w_req, create_graph=True)
    unrolled = [wi - xi * (gi + wd * wi) for wi, gi in zip(w_req, grads)]
    outer = F.cross_entropy(tiny_forward(val[0], *unrolled, alpha), val[1])
    exact = torch.autograd.grad(outer, alpha)[0]
    torch.testing.assert_close(approx[0], exact, rtol=1e-4, atol=1e-6)
    # The first-order gradient is measurably different here, so the test tells the two apart.
    first = torch.autograd.grad(loss_fn(model, val), model.alpha)[0]
    assert (first - exact).abs().max() > 1e-3
    # The weights are back where they were.
    assert torch.equal(model.w1.detach(), w[0]) and torch.equal(model.w2.detach(), w[1])


def exact_unrolled_gradient(model, train, val, xi, wd, buffers):
    """d/d alpha of L_val(w - xi * (buffer + dL_train/dw + wd * w), alpha), through the inner step."""
    alpha = model.alpha.detach().clone().requires_grad_(True)
    w_req = [model.w1.detach().clone().requires_grad_(True), model.w2.detach().clone().requires_grad_(True)]
    grads = torch.autograd.grad(F.cross_entropy(tiny_forward(train[0], *w_req, alpha), train[1]), w_req,
                                create_graph=True)
    unrolled = [wi - xi * (b + gi + wd * wi) for wi, gi, b in zip(w_req, grads, buffers)]
    return torch.autograd.grad(F.cross_entropy(tiny_forward(val[0], *unrolled, alpha), val[1]), alpha)[0]


def test_the_virtual_step_carries_the_optimizers_momentum_and_weight_decay():
    """With a large weight decay and a momentum buffer in the weight optimizer, the virtual step is
    w - xi * (momentum * buffer + grad + wd * w); leaving out either term moves the gradient by far
    more than the tolerance."""
    g = torch.Generator().manual_seed(2)
    train = (torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
    val = (torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
    model = Tiny()
    xi, wd, momentum = 0.5, 0.5, 0.9
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=xi, momentum=momentum, weight_decay=wd)
    for w in model.weight_parameters():
        w_opt.state[w]["momentum_buffer"] = torch.randn(w.shape, generator=g, dtype=torch.float64)
    architect = Architect(model, loss_fn, order=2, network_momentum=momentum, network_weight_decay=wd)
    _, approx = architect.unrolled_gradient(train, val, xi, w_opt)
    buffers = [momentum * w_opt.state[w]["momentum_buffer"] for w in model.weight_parameters()]
    exact = exact_unrolled_gradient(model, train, val, xi, wd, buffers)
    torch.testing.assert_close(approx[0], exact, rtol=1e-4, atol=1e-6)
    zero = [torch.zeros_like(b) for b in buffers]
    for without in (exact_unrolled_gradient(model, train, val, xi, 0.0, buffers),  # no weight decay
                    exact_unrolled_gradient(model, train, val, xi, wd, zero)):  # no momentum
        assert (without - exact).abs().max() > 1e-2


def test_architect_step_moves_alphas_only():
    torch.manual_seed(0)
    net = SearchNetwork(in_channels=1, resolution=8, num_classes=3, cells=3, channels=4)
    batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    weights_before = [p.detach().clone() for p in net.weight_parameters()]
    alphas_before = [a.detach().clone() for a in net.arch_parameters()]
    for order in (1, 2):
        Architect(net, loss_fn, order=order).step(batch, batch, xi=0.025)
    assert all(torch.equal(a, b) for a, b in zip(weights_before, [p.detach() for p in net.weight_parameters()]))
    assert all(not torch.equal(a, b) for a, b in zip(alphas_before, [a.detach() for a in net.arch_parameters()]))


def test_genotype_keeps_the_two_strongest_non_none_inputs():
    k = 14
    w = torch.full((k, len(PRIMITIVES)), 0.1)
    none, sep3, skip = PRIMITIVES.index("none"), PRIMITIVES.index("sep_conv_3x3"), PRIMITIVES.index("skip_connect")
    w[:, none] = 0.9  # 'none' never wins, however strong
    w[1, sep3] = 0.5  # node 0: edge from input 1 strongest
    w[0, skip] = 0.3
    w[4, sep3] = 0.6  # node 1 (edges 2, 3, 4): from node 0 (index 2)
    w[2, skip] = 0.4
    g = derive_genotype(w, w)
    assert g.normal[:2] == [("sep_conv_3x3", 1), ("skip_connect", 0)]
    assert g.normal[2:4] == [("sep_conv_3x3", 2), ("skip_connect", 0)]
    assert g.normal_concat == [2, 3, 4, 5]


def test_killed_search_resumes_with_the_same_architecture(synthetic_set, tmp_path):
    cfg = validate_config({"device": "cpu", "search": {"darts": {"cells": 3, "channels": 4, "epochs": 3,
                                                                 "batch_size": 8, "order": 2}}})

    def run(out_dir, log):
        options = get_strategy("darts").data_options(cfg["search"]["darts"])
        data = SearchData(cfg, "full", 1, *synthetic_set, **options)
        result = darts.search(cfg, data, 1, out_dir, "cpu", log)
        assert [row["epoch"] for row in result.history] == [1, 2, 3]
        return result.choices, result.history

    assert_resumes_after_a_kill(run, tmp_path)


def test_a_killed_search_on_data_since_remade_starts_afresh(synthetic_set, teacher_file, tmp_path):
    """Kill a search after epoch 1, remake its synthetic set with other pixels (a changed synthesis
    key) and its soft labels, rerun: the search must say why it starts afresh and end where a clean
    search on the new data ends, not resume the old weights."""
    from dfnas.soft_labels import make_soft_labels
    from dfnas.teacher import load_teacher

    cfg = validate_config({"device": "cpu", "soft_labels": {"views": 3},
                           "search": {"darts": {"cells": 3, "channels": 4, "epochs": 2, "batch_size": 8}}})
    dataset, labels = tmp_path / "dataset.h5", tmp_path / "labels.h5"
    shutil.copy(synthetic_set[0], dataset)
    shutil.copy(synthetic_set[1], labels)

    def run(out_dir, log):
        data = SearchData(cfg, "full", 1, dataset, labels, **get_strategy("darts").data_options(cfg["search"]["darts"]))
        result = darts.search(cfg, data, 1, out_dir, "cpu", log)
        return result.choices, result.history

    def kill(msg):
        if EPOCH_1_DONE.search(msg):
            raise Killed(msg)

    with pytest.raises(Killed):
        run(tmp_path / "killed", kill)
    with h5py.File(dataset, "a") as f:  # the remade set: other pixels in every image
        f["train/images"][...] = 255 - f["train/images"][...]
    make_soft_labels(cfg, load_teacher(teacher_file), dataset, labels, log=quiet)
    messages = []
    resumed = run(tmp_path / "killed", messages.append)
    assert f"ignoring {tmp_path / 'killed' / 'checkpoint.pt'}: it was made from other inputs (dataset_sha256); " \
           "starting afresh" in messages
    assert not any(m.startswith("resuming from") for m in messages)
    assert resumed == run(tmp_path / "clean", quiet)


def test_an_update_budget_ends_inside_a_pass(synthetic_set, tmp_path):
    # 30 training images in halves of 15: 3 steps of 4 per pass; 7 updates = passes of 3, 3 and 1.
    cfg = validate_config({"device": "cpu", "search": {"darts": {"cells": 3, "channels": 4, "iterations": 7,
                                                                 "batch_size": 4, "lr": 0.1, "lr_min": 0.0}}})
    data = SearchData(cfg, "full", 0, *synthetic_set, **get_strategy("darts").data_options(cfg["search"]["darts"]))
    result = darts.search(cfg, data, 0, tmp_path, "cpu", lambda *_: None)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    # Per-step cosine: the last update is step 6 of 7.
    assert result.history[-1]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 6 / 7)))
    assert result.history[0]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 2 / 7)))
    found = result.found_by
    assert found["weight_updates"] == 7 and found["heldout_acc"] == result.history[-1]["val_acc"]
    assert round(found["heldout_acc"] * 15, 6).is_integer()  # scored on the 15 held-out images


@pytest.mark.slow
def test_a_compiled_search_follows_the_eager_one(synthetic_set, tmp_path, order=1):
    """search.darts.compile through torch.compile's graph capture (backend "eager": dynamo's tracing
    and guards without code generation, so that it fits the suite's time) gives the eager search's
    losses, architecture parameters and genotype; the network's state dict keeps its own names.
    (Through aot_eager, which traces autograd too, first and second order passed when written: 2.5
    and more minutes on this CPU.)"""
    def run(setting):
        torch._dynamo.reset()
        cfg = validate_config({"device": "cpu", "search": {"darts": {
            "cells": 3, "channels": 4, "epochs": 2, "batch_size": 8, "order": order, "compile": setting}}})
        data = SearchData(cfg, "full", 0, *synthetic_set, **get_strategy("darts").data_options(cfg["search"]["darts"]))
        return darts.search(cfg, data, 0, tmp_path / f"{setting}{order}", "cpu", quiet)

    eager, compiled = run(False), run("eager")
    for a, b in zip(eager.history, compiled.history):
        for key in ("train_loss", "arch_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(eager.network.arch_parameters(), compiled.network.arch_parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert compiled.choices == eager.choices
    assert list(compiled.network.state_dict()) == list(eager.network.state_dict())
