"""ProxylessNAS strategy: the binary-gate gradient, one path per weight step, the re-normalization that
leaves the operations not drawn alone, the expected-cost terms, a tiny search that resumes, and
searches priced by latency tables (the tables themselves: test_latency.py)."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_resumes_after_a_kill, quiet
from dfnas.config import validate_config
from dfnas.flops import count_macs
from dfnas.latency import measure_latency_table, table_from_json
from dfnas.search_data import SearchData
from dfnas.spaces.proxyless import OPS, ZERO, ProxylessNet, build_from_arch, flops_table
from dfnas.strategies import get_strategy
from dfnas.strategies import proxyless as proxyless_strategy
from dfnas.strategies.proxyless import (
    ArchParameters,
    arch_step,
    binary_gate_grad,
    gated_forward,
    hardware_loss,
    weight_step,
)
from dfnas.strategies.proxyless import search as search_proxyless

TINY = {"in_channels": 1, "num_classes": 10, "stem": 4, "stem_stride": 2, "first": 4, "stage_blocks": [2, 2],
        "widths": [8, 8], "strides": [2, 1], "feature_mix": 16}


def tiny_net(seed=0):
    torch.manual_seed(seed)
    net = ProxylessNet(None, **TINY)
    arch = ArchParameters(net.allowed, init_std=1.0)
    return net, arch


def batch(seed=0, n=6):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_binary_gate_gradient_by_hand():
    alpha = torch.tensor([0.5, -0.25])
    q = F.softmax(alpha, 0)
    g = torch.tensor([[0.3, -1.2]])
    got = binary_gate_grad(g, q[None])[0]
    q1, q2 = q.tolist()
    # dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i)
    by_hand = [0.3 * q1 * (1 - q1) + (-1.2) * q2 * (0 - q1), 0.3 * q1 * (0 - q2) + (-1.2) * q2 * (1 - q2)]
    torch.testing.assert_close(got, torch.tensor(by_hand))
    assert got.sum().item() == pytest.approx(0.0, abs=1e-7)  # a softmax gradient sums to zero


def test_binary_gate_gradient_is_the_gradient_of_the_expected_loss_when_the_loss_is_linear():
    """With L = <w, out>, out = g_1 o_1 + g_2 o_2 and g ~ q, the rule gives exactly
    d/dalpha sum_j q_j(alpha) <w, o_j> (checked by central differences)."""
    gen = torch.Generator().manual_seed(1)
    o = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(5, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([0.2, -0.7], dtype=torch.float64)
    gates = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    (w * (gates[:, None] * o).sum(0)).sum().backward()
    rule = binary_gate_grad(gates.grad[None], F.softmax(alpha, 0)[None])[0]

    def expected(a):
        return (F.softmax(a, 0) * (o @ w)).sum().item()

    eps = 1e-6
    numeric = [(expected(alpha + eps * e) - expected(alpha - eps * e)) / (2 * eps)
               for e in torch.eye(2, dtype=torch.float64)]
    torch.testing.assert_close(rule, torch.tensor(numeric, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def count_calls(net):
    calls = {}
    for b, block in enumerate(net.blocks):
        for name, op in block.ops.items():
            calls[(b, name)] = [0, 0]  # (with a graph, without)

            def hook(module, inputs, out, key=(b, name)):
                calls[key][0 if torch.is_grad_enabled() else 1] += 1

            op.register_forward_hook(hook)
    return calls


def test_weight_step_runs_one_operation_per_block():
    net, arch = tiny_net()
    calls = count_calls(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = batch()
    before = arch.alpha.detach().clone()
    _, logits, path = weight_step(net, arch, opt, x, y, F.cross_entropy, torch.Generator().manual_seed(0))
    assert logits.shape == (6, 10)
    for b, choice in enumerate(path):
        assert choice in arch.allowed[b]
        ran = [name for (bb, name), (n, _) in calls.items() if bb == b and n]
        assert ran == ([] if choice == ZERO else [OPS[choice]])
        assert all(calls[(b, name)][0] <= 1 for name in net.blocks[b].ops)
        for name, op in net.blocks[b].ops.items():
            assert (op[0].weight.grad is not None) == (name == OPS[choice])
    assert torch.equal(arch.alpha.detach(), before)
    # Paths follow the probabilities: a block whose alpha strongly favours one operation draws it.
    with torch.no_grad():
        arch.alpha[0] = torch.tensor([0, 0, 0, 0, 0, 12.0, 0])
    gen = torch.Generator().manual_seed(1)
    assert sum(arch.sample_path(gen)[0] == 5 for _ in range(50)) >= 48


def test_arch_step_moves_only_the_drawn_pair_and_keeps_the_rest():
    net, arch = tiny_net()
    calls = count_calls(net)
    opt = torch.optim.Adam([arch.alpha], lr=0.1, betas=(0.0, 0.999))
    table = flops_table(TINY, (1, 16, 16))
    x, y = batch(1)
    for step in range(3):
        probs = arch.probs().detach().clone()
        alpha = arch.alpha.detach().clone()
        gen = torch.Generator().manual_seed(step)
        pairs, _ = ArchParameters.sample_pairs(arch, gen)
        for c in calls.values():
            c[:] = [0, 0]
        out = arch_step(net, arch, opt, x, y, F.cross_entropy, torch.Generator().manual_seed(step), table,
                        target=float(table.base), weight=0.5)
        assert math.isfinite(out["loss"]) and out["cost"] > table.base
        after = arch.probs().detach()
        for b, (active, inactive) in enumerate(pairs):
            rest = [k for k in arch.allowed[b] if k not in (active, inactive)]
            # Operations not drawn keep their probabilities (hence their ratios); the pair keeps its mass.
            torch.testing.assert_close(after[b, rest], probs[b, rest], rtol=1e-5, atol=1e-7)
            assert after[b, [active, inactive]].sum().item() == pytest.approx(probs[b, [active, inactive]].sum().item(),
                                                                             rel=1e-5)
            assert not torch.equal(arch.alpha.detach()[b, [active, inactive]], alpha[b, [active, inactive]])
            # The active operation ran with a graph, the inactive one without; nothing else ran.
            for name in net.blocks[b].ops:
                want = [int(name == OPS[active]), int(name == OPS[inactive])]
                assert calls[(b, name)] == want
    assert all(p.grad is None for p in net.parameters())  # the weights are left alone


def test_gated_forward_equals_the_active_path():
    net, arch = tiny_net()
    net.eval()
    x, _ = batch()
    pairs, _ = arch.sample_pairs(torch.Generator().manual_seed(0))
    gates = torch.tensor([[1.0, 0.0]] * len(pairs))
    torch.testing.assert_close(gated_forward(net, x, pairs, gates), net(x, [a for a, _ in pairs]))


def mbconv_macs(c_in, c_out, h_in, stride, kernel, expansion):
    """Multiply-adds of an MBConv by hand: expansion 1x1, depthwise k x k, projection 1x1."""
    mid, h_out = c_in * expansion, h_in // stride
    return h_in**2 * c_in * mid + h_out**2 * mid * kernel**2 + h_out**2 * mid * c_out


def test_expected_flops_and_its_gradient():
    net, arch = tiny_net()
    table = flops_table(TINY, (1, 16, 16))
    # TINY on 16x16: stem 1->4 (stride 2, 8x8), first block 4->4 (expansion 1: depthwise + projection),
    # blocks 4->8 stride 2 (8x8 -> 4x4) then three 8->8 at 4x4, feature mix 8->16 at 4x4, classifier 16->10.
    base = 8**2 * 4 * 9 + (8**2 * 4 * 9 + 8**2 * 4 * 4) + 4**2 * 8 * 16 + 16 * 10
    assert table.base == base
    shapes = [(4, 8, 8, 2), (8, 8, 4, 1), (8, 8, 4, 1), (8, 8, 4, 1)]

    def macs(b, k):
        return 0 if k == ZERO else mbconv_macs(*shapes[b], int(OPS[k][0]), int(OPS[k][-1]))

    probs = arch.probs()
    expected = table.expected(probs)
    by_hand = base + sum(probs[b, k].item() * macs(b, k) for b in range(4) for k in arch.allowed[b])
    assert expected.item() == pytest.approx(by_hand, rel=1e-6)
    # One-hot probabilities give the multiply-adds of the built network.
    for seed in range(3):
        path = arch.sample_path(torch.Generator().manual_seed(seed))
        onehot = F.one_hot(torch.tensor(path), len(OPS)).float()
        assert table.expected(onehot).item() == count_macs(ProxylessNet(path, **TINY), (1, 16, 16))
        assert table.cost(path) == base + sum(macs(b, k) for b, k in enumerate(path))
    # dE/dalpha_bi = p_bi (c_bi - sum_k p_bk c_bk); operations a block does not allow get nothing.
    (grad,) = torch.autograd.grad(expected, arch.alpha)
    c = torch.tensor([[float(macs(b, k)) if k in arch.allowed[b] else 0.0 for k in range(len(OPS))] for b in range(4)])
    p = probs.detach()
    torch.testing.assert_close(grad, p * (c - (p * c).sum(1, keepdim=True)), rtol=1e-4, atol=1e-2)
    assert (grad[~arch.mask] == 0).all()


def test_hardware_loss_by_hand_and_its_pull_toward_cheaper_operations():
    ce = torch.tensor(2.0)
    # CE * (E[cost] / target) ** weight: above the target the loss grows, below it shrinks.
    assert hardware_loss(ce, torch.tensor(600.0), 300.0, 0.5).item() == pytest.approx(2 * 2**0.5)
    assert hardware_loss(ce, torch.tensor(150.0), 300.0, 0.5).item() == pytest.approx(2 * 0.5**0.5)
    assert hardware_loss(ce, None, 300.0, 0.5) is ce and hardware_loss(ce, torch.tensor(600.0), 300.0, 0.0) is ce
    # With a constant cross-entropy only the cost moves the alphas: every drawn pair of operations
    # of different cost moves toward its cheaper one.
    net, arch = tiny_net()
    table = flops_table(TINY, (1, 16, 16))
    pairs, _ = arch.sample_pairs(torch.Generator().manual_seed(5))  # the pairs the step will draw
    before = arch.alpha.detach().clone()
    opt = torch.optim.Adam([arch.alpha], lr=0.1, betas=(0.0, 0.999))
    arch_step(net, arch, opt, *batch(), lambda logits, y: logits.sum() * 0 + 1.0, torch.Generator().manual_seed(5),
              cost_table=table, target=float(table.base), weight=1.0)
    base_path = [allowed[0] for allowed in arch.allowed]
    moved = 0
    for b, (a, i) in enumerate(pairs):
        if i is None:
            continue
        cost_a = table.cost(base_path[:b] + [a] + base_path[b + 1:])
        cost_i = table.cost(base_path[:b] + [i] + base_path[b + 1:])
        if cost_a == cost_i:
            continue
        cheap, dear = (a, i) if cost_a < cost_i else (i, a)
        gap_before = before[b, cheap] - before[b, dear]
        assert arch.alpha[b, cheap] - arch.alpha[b, dear] > gap_before + 1e-3, (b, cheap, dear)
        moved += 1
    assert moved >= 2


# --------------------------------------------------------------------------------------------
# The search loop on a real SearchData (the fake Fashion-MNIST of conftest)

TINY_SEARCH = {"stem": 4, "stem_stride": 2, "first": 4, "stage_blocks": [1, 2], "widths": [8, 8], "strides": [2, 1],
               "feature_mix": 16, "warmup_epochs": 1, "epochs": 2, "batch_size": 8, "arch_every": 1, "arch_lr": 0.05}


def tiny_search(base_config, **over):
    cfg = copy.deepcopy(base_config)
    cfg["search"] = {"natural_images": 40, "channels_last": False, "proxyless": {**TINY_SEARCH, **over}}
    cfg = validate_config(cfg)
    return cfg, SearchData(cfg, "natural", 0, train_portion=0.6)


def test_search_finds_an_architecture_and_resumes_after_a_kill(base_config, tmp_path):
    results = {}

    def run(out_dir, log):
        cfg, data = tiny_search(base_config)
        results[out_dir.name] = search_proxyless(cfg, data, 3, out_dir, "cpu", log=log)
        return results[out_dir.name].choices, results[out_dir.name].history

    assert_resumes_after_a_kill(run, tmp_path)
    ref = results["uninterrupted"]
    ops = ref.choices["ops"]
    net = build_from_arch({"space_args": ref.space_args, "choices": ref.choices}, 1, 28, 10, {})
    assert len(ops) == 3 and ZERO not in ops[:1] and all(0 <= c < len(OPS) for c in ops)
    assert ref.found_by["multiply_adds"] == count_macs(net, (1, 28, 28)) and ref.found_by["latency_ms"] is None
    rows = ref.history
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["phase"] for r in rows] == ["warmup", "search", "search"]
    # 24 weight images in batches of 8, an architecture step after each weight step once searching.
    assert [r["arch_steps"] for r in rows] == [0, 3, 3]
    assert sum(rows[-1][f"p_1_{op}"] for op in OPS) == pytest.approx(1.0, abs=1e-4)
    assert any(rows[0][f"p_{b}_{op}"] != rows[-1][f"p_{b}_{op}"] for b in range(3) for op in OPS[:6])
    assert get_strategy("proxyless").space == "proxyless" and ref.space_args["widths"] == [8, 8]


def test_search_with_a_measured_latency_table(base_config, tmp_path):
    cfg, data = tiny_search(base_config, warmup_epochs=0, epochs=1, hardware={"metric": "latency"})
    out = search_proxyless(cfg, data, 0, tmp_path, "cpu", log=quiet)
    table = json.loads((tmp_path / "latency_table.json").read_text())
    assert len(table["blocks"]) == 3
    assert out.found_by["latency_ms"] == pytest.approx(table_from_json(table).cost(out.choices["ops"]))
    assert out.history[-1]["expected_latency_ms"] > 0


def test_a_given_latency_table_prices_a_flops_search(base_config, tmp_path):
    from dfnas.spaces.proxyless import space_args

    cfg, data = tiny_search(base_config)
    table = measure_latency_table(space_args(cfg["search"]["proxyless"], (1, 28, 28), 10), (1, 28, 28), "cpu", repeats=1,
                                  min_seconds=1e-4)
    (tmp_path / "lat.json").write_text(json.dumps(table))
    cfg, data = tiny_search(base_config, warmup_epochs=0, epochs=1,
                            hardware={"metric": "flops", "latency_table": str(tmp_path / "lat.json")})
    out = search_proxyless(cfg, data, 0, tmp_path / "s", "cpu", log=quiet)
    assert out.found_by["hardware_metric"] == "flops"
    assert out.found_by["latency_ms"] == pytest.approx(table_from_json(table).cost(out.choices["ops"]))
    assert "expected_latency_ms" in out.history[-1]


def test_update_budgets_of_the_warm_up_and_the_search(base_config, tmp_path, monkeypatch):
    """``warmup_iterations`` and ``iterations`` count weight updates; each phase's cosine runs over its
    own budget, and the architecture json records the total."""
    calls = []
    real = proxyless_strategy.weight_step
    monkeypatch.setattr(proxyless_strategy, "weight_step", lambda *a, **k: calls.append(a[2].param_groups[0]["lr"])
                        or real(*a, **k))
    cfg, data = tiny_search(base_config, warmup_iterations=2, iterations=5, lr=0.1, warmup_lr=0.2)
    assert data.steps_per_epoch(0, 8) == 3  # 24 weight images, batch 8
    result = proxyless_strategy.search(cfg, data, 0, tmp_path, "cpu", log=lambda *_: None)
    assert result.found_by["weight_updates"] == 7 and len(calls) == 7
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * k / 2)) for k in range(2)]
    expected += [0.1 * 0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]
    assert calls == pytest.approx(expected)
    assert [row["phase"] for row in result.history] == ["warmup", "search", "search"]  # passes of 2 | 3 + 2 updates
    assert [row["arch_steps"] for row in result.history] == [0, 3, 2]  # arch_every 1


def test_the_first_search_pass_can_skip_architecture_steps(base_config, tmp_path):
    """The released code makes no architecture step in the first search epoch (``arch_skip_epochs: 1``)."""
    cfg, data = tiny_search(base_config, warmup_iterations=2, iterations=5, arch_skip_epochs=1)
    result = proxyless_strategy.search(cfg, data, 0, tmp_path, "cpu", log=lambda *_: None)
    assert [row["arch_steps"] for row in result.history] == [0, 0, 2]
    assert result.found_by["weight_updates"] == 7


def test_held_out_evaluations_every_so_many_updates_and_at_each_phase_end(base_config, tmp_path, monkeypatch):
    """``eval_updates: 7`` with 3 updates an epoch, 2 warm-up and 5 search epochs: the update count
    passes 7, 14 and 21 in epochs 3, 5 and 7, and the phases end at epochs 2 and 7, so the argmax
    path is scored after epochs 2, 3, 5 and 7 alone (left empty in the others); null scores every
    epoch."""
    calls = []
    real = SearchData.evaluate
    monkeypatch.setattr(SearchData, "evaluate", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    cfg, data = tiny_search(base_config, warmup_epochs=2, epochs=5, eval_updates=7)
    result = proxyless_strategy.search(cfg, data, 0, tmp_path / "every7", "cpu", log=quiet)
    scored = [row["epoch"] for row in result.history if row["val_acc"] != ""]
    assert scored == [2, 3, 5, 7] and len(calls) == 4
    assert all(row["val_loss"] == "" for row in result.history if row["epoch"] not in scored)
    assert result.found_by["heldout_acc"] == result.history[-1]["val_acc"] != ""
    cfg, data = tiny_search(base_config, warmup_epochs=2, epochs=5)
    every = proxyless_strategy.search(cfg, data, 0, tmp_path / "every", "cpu", log=quiet)
    assert all(isinstance(row["val_acc"], float) for row in every.history) and len(calls) == 4 + 7
    # Scoring changes nothing that trains: the same losses, probabilities and final score.
    unscored = ("val_loss", "val_acc")
    assert [{k: v for k, v in r.items() if k not in unscored} for r in every.history] == \
        [{k: v for k, v in r.items() if k not in unscored} for r in result.history]
    assert every.found_by == result.found_by and every.choices == result.choices


def test_a_checkpoint_resumes_across_a_change_of_eval_updates(base_config, tmp_path, monkeypatch):
    """How often the held-out part is scored changes nothing that trains, so it is not part of what a
    checkpoint must match; every other search key is (lr here)."""
    fingerprints = []
    real = proxyless_strategy.Checkpoint

    def spy(path, fingerprint, log):
        fingerprints.append(fingerprint)
        return real(path, fingerprint, log)

    monkeypatch.setattr(proxyless_strategy, "Checkpoint", spy)
    for over in ({"eval_updates": 7}, {}, {"lr": 0.5}):
        cfg, data = tiny_search(base_config, warmup_epochs=0, epochs=1, **over)
        proxyless_strategy.search(cfg, data, 0, tmp_path / str(len(fingerprints)), "cpu", log=quiet)
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
