"""Data-parallel training (dfnas.distributed): two gloo ranks on the CPU follow the single-process
run with the same global batch (training, and the DARTS and ProxylessNAS weight and architecture
steps exactly), and `python -m dfnas.retrain` / `-m dfnas.search` under torchrun write one result."""

import copy
import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO, dataset_json, quiet
from dfnas.config import validate_config
from dfnas.data import TensorImages
from dfnas import distributed
from dfnas.distributed import Dist
from dfnas.imaging import augment_batch
from dfnas.search import run_search
from dfnas.spaces.darts import SearchNetwork
from dfnas.spaces.proxyless import ProxylessNet, flops_table
from dfnas.strategies import darts, proxyless
from dfnas.train import Recipe, train_classifier


def test_shares_split_a_batch_in_order():
    for n in (1, 2, 7, 64, 65):
        for world in (1, 2, 3, 4):
            parts = [Dist(r, world, r).share(n) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            sizes = [len(range(n)[p]) for p in parts]
            assert max(sizes) - min(sizes) <= 1
    assert Dist(1, 2, 1).share(5) == slice(3, 5)


def test_a_share_is_augmented_as_in_the_whole_batch():
    recipe = Recipe(crop_padding=2, flip=True, cutout=3, color_jitter=(0.4, 0.4, 0.4))
    x = torch.rand(7, 3, 8, 8)
    whole = augment_batch(x, recipe, torch.Generator().manual_seed(3))
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    parts = [augment_batch(x[Dist(r, 2, r).share(7)], recipe, gens[r], Dist(r, 2, r).share(7), 7) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(gens[0].get_state(), gens[1].get_state())  # the ranks' generators stay in step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)  # no BatchNorm: two ranks must then give the single-device result
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3))


def tiny_data() -> TensorImages:
    g = torch.Generator().manual_seed(1)
    return TensorImages(torch.randint(0, 256, (53, 1, 8, 8), dtype=torch.uint8, generator=g),
                        torch.randint(0, 3, (53,), generator=g))


RECIPE = Recipe(epochs=3, batch_size=16, lr=0.2, crop_padding=1, flip=True, cutout=2, grad_clip=1.0)


def join(rank: int, world: int, port: int) -> Dist:
    """This process as rank ``rank`` of a gloo group of ``world`` on the CPU."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return distributed.from_env(torch.device("cpu"))


def spawn_two(fn, *args) -> None:
    """``fn(rank, 2, port, *args)`` in two processes."""
    torch.multiprocessing.spawn(fn, args=(2, free_port(), *args), nprocs=2, join=True)


def train_rank(rank: int, world: int, port: int, out: str) -> None:
    dist = join(rank, world, port)
    model = tiny_net()
    history = train_classifier(model, tiny_data(), RECIPE, torch.device("cpu"), 5, [0.5], [0.25], log=quiet,
                               dist=dist)
    if rank == 0:
        torch.save({"history": history, "state": model.state_dict()}, out)
    distributed.close(dist)


def test_two_gloo_ranks_follow_one_process(tmp_path):
    """53 images in global batches of 16 (16, 16, 16, 5: the last split 3 + 2), 3 epochs: the
    gradients averaged over the ranks, weighted by share, are the global batch's, so the weights and
    the loss curve equal the single-process run's up to float summation order."""
    model = tiny_net()
    single = train_classifier(model, tiny_data(), RECIPE, torch.device("cpu"), 5, [0.5], [0.25], log=quiet)
    out = tmp_path / "rank0.pt"
    spawn_two(train_rank, str(out))
    ddp = torch.load(out, weights_only=False)
    assert [round(r["train_loss"], 4) for r in ddp["history"]] == pytest.approx(
        [round(r["train_loss"], 4) for r in single], abs=2e-4)
    assert [r["train_top1"] for r in ddp["history"]] == [r["train_top1"] for r in single]
    for name, value in model.state_dict().items():
        assert torch.allclose(ddp["state"][name], value, atol=1e-5), name
    assert single[-1]["train_loss"] < single[0]["train_loss"]  # it trained


def gradient_problem():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    w = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    unused = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    return x, y, w, unused


def mse_gradients(x, y, w, unused) -> list:
    return list(torch.autograd.grad(((x @ w - y) ** 2).mean(), [w, unused], allow_unused=True))


def gradients_rank(rank: int, world: int, port: int, out: str) -> None:
    dist = join(rank, world, port)
    x, y, w, unused = gradient_problem()
    part = dist.share(len(y))
    got = dist.batch_gradients(mse_gradients(x[part], y[part], w, unused), len(y[part]))
    if rank == 0:
        torch.save(got, out)
    distributed.close(dist)


def test_batch_gradients_are_the_whole_batchs(tmp_path):
    """A batch of 5 in shares of 3 and 2: each rank's gradient of its own mean loss, weighted by its
    share, sums to the gradient of the whole batch's mean loss (the plain mean of the two does not);
    an unused tensor stays None."""
    x, y, w, unused = gradient_problem()
    whole = mse_gradients(x, y, w, unused)
    spawn_two(gradients_rank, str(tmp_path / "grads.pt"))
    got = torch.load(tmp_path / "grads.pt")
    assert got[1] is None and whole[1] is None
    torch.testing.assert_close(got[0], whole[0], rtol=0, atol=1e-12)
    halves = [mse_gradients(x[s], y[s], w, unused)[0] for s in (slice(0, 3), slice(3, 5))]
    assert not torch.allclose((halves[0] + halves[1]) / 2, whole[0], atol=1e-3)


# The searches' steps, data-parallel: the networks in eval mode (BatchNorm from running statistics),
# so that a share's outputs are exactly its rows of the whole batch's and two ranks must reproduce
# the single process's weights and architecture parameters.
STEP_BATCH = 5  # shares of 3 and 2
PROXYLESS_NET = {"in_channels": 1, "num_classes": 3, "stem": 4, "stem_stride": 2, "first": 4, "stage_blocks": [2, 2],
                 "widths": [8, 8], "strides": [2, 1], "feature_mix": 16}


def step_batches(count: int, size: int):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(STEP_BATCH, 1, size, size, generator=g), torch.randint(0, 3, (STEP_BATCH,), generator=g))
            for _ in range(count)]


def cross_entropy(forward, batch):
    return F.cross_entropy(forward(batch[0]), batch[1])


def darts_steps(order: int, dist: Dist | None = None) -> list[torch.Tensor]:
    """Two rounds of an architecture step and a weight step (momentum, weight decay, clipping)."""
    torch.manual_seed(0)
    net = SearchNetwork(in_channels=1, resolution=8, num_classes=3, cells=3, channels=4).eval()
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    architect = darts.Architect(net, cross_entropy, lr=0.01, order=order, dist=dist)
    part = slice(None) if dist is None else dist.share(STEP_BATCH)
    batches = [(x[part], y[part]) for x, y in step_batches(4, 8)]
    for train, val in zip(batches[0::2], batches[1::2]):
        architect.step(train, val, 0.1, w_opt)
        darts.weight_step(net, net, w_opt, train, F.cross_entropy, 0.5, dist)
    return [p.detach().clone() for p in (*net.arch_parameters(), *net.weight_parameters())]


def proxyless_steps(dist: Dist | None = None) -> list[torch.Tensor]:
    """Two rounds of a weight step and an architecture step with the FLOPs term, paths and pairs
    drawn from one seed."""
    torch.manual_seed(0)
    net = ProxylessNet(None, **PROXYLESS_NET).eval()
    arch = proxyless.ArchParameters(net.allowed, init_std=1.0)
    table = flops_table(PROXYLESS_NET, (1, 16, 16))
    w_opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=4e-5)
    a_opt = torch.optim.Adam([arch.alpha], lr=0.05, betas=(0.0, 0.999))
    gen = torch.Generator().manual_seed(5)
    part = slice(None) if dist is None else dist.share(STEP_BATCH)
    batches = [(x[part], y[part]) for x, y in step_batches(4, 16)]
    for (x, y), (ax, ay) in zip(batches[0::2], batches[1::2]):
        proxyless.weight_step(net, arch, w_opt, x, y, F.cross_entropy, gen, dist)
        proxyless.arch_step(net, arch, a_opt, ax, ay, F.cross_entropy, gen, table, 3e5, 0.5, None, dist)
    return [arch.alpha.detach().clone(), *(p.detach().clone() for p in net.parameters())]


def steps_rank(rank: int, world: int, port: int, out: str) -> None:
    dist = join(rank, world, port)
    got = {"darts1": darts_steps(1, dist), "darts2": darts_steps(2, dist), "proxyless": proxyless_steps(dist)}
    if rank == 0:
        torch.save(got, out)
    distributed.close(dist)


def test_search_steps_on_two_ranks_equal_one_process(tmp_path):
    """DARTS (first and second order: the virtual step, the unrolled validation gradient and the
    finite-difference Hessian term are all the whole batch's) and ProxylessNAS (weights of the drawn
    path, binary-gate and FLOPs-term gradients) on two gloo ranks end with the single process's
    architecture parameters and weights."""
    single = {"darts1": darts_steps(1), "darts2": darts_steps(2), "proxyless": proxyless_steps()}
    spawn_two(steps_rank, str(tmp_path / "steps.pt"))
    ranks = torch.load(tmp_path / "steps.pt")
    torch.manual_seed(0)
    start = [p.detach() for p in SearchNetwork(in_channels=1, resolution=8, num_classes=3, cells=3,
                                                channels=4).arch_parameters()]
    assert not torch.allclose(single["darts2"][0], start[0])  # the architecture moved
    for key, tensors in single.items():
        assert len(ranks[key]) == len(tensors)
        for k, (a, b) in enumerate(zip(ranks[key], tensors)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{key} tensor {k}")


def test_retrain_under_torchrun(base_config, tmp_path):
    """`torchrun --nproc_per_node 2 -m dfnas.retrain` on the CPU (gloo): one metrics file, written
    by rank 0, recording 2 ranks, whose loss curve stays near the single-process one (BatchNorm
    statistics are per rank, so not equal)."""
    cfg = copy.deepcopy(base_config)
    cfg["retrain"] = {"train_images": 200, "epochs": 3, "batch_size": 40, "lr": 0.05, "cutout": 0,
                      "drop_path": 0.0, "aux_weight": 0.0, "darts": {"cells": 3, "channels": 4}}
    cfg["search"] = {"darts": {"cells": 3, "channels": 4}}
    cfg = validate_config(cfg)
    run_search(cfg, "darts", "random", 1, tmp_path / "search", log=quiet, dataset_json=dataset_json(cfg, tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    args = ["--config", str(tmp_path / "config.json"), "--arch", str(tmp_path / "search" / "architecture.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "dfnas.retrain", *args, "--out", str(tmp_path / "one.json")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "dfnas.retrain", *args, "--out", str(tmp_path / "two.json")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    single, ddp = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert single["ranks"] == 1 and ddp["ranks"] == 2
    assert two.stdout.count("top-1") == 1  # rank 0 alone speaks
    losses = [(a["train_loss"], b["train_loss"]) for a, b in zip(single["history"], ddp["history"])]
    assert len(losses) == 3 and all(abs(a - b) < 0.1 * a for a, b in losses), losses
    assert not (tmp_path / "two.json.ckpt").exists()


def torchrun(args: list[str], env: dict, ranks: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(ranks), *args], env=env, capture_output=True, text=True, timeout=600)


TORCHRUN_SEARCHES = {
    "spos": {"stem": 4, "stem_stride": 1, "stage_blocks": [1, 2], "widths": [8, 16], "last_conv": 32, "epochs": 3,
             "batch_size": 20, "lr": 0.1, "train_portion": 0.7, "train_flops": None, "bins": 2, "flops_bound": None,
             "population": 4, "generations": 2, "topk": 2, "mutations": 2, "crossovers": 2, "bn_batches": 2},
    "darts": {"cells": 3, "channels": 4, "epochs": 2, "batch_size": 20, "lr": 0.1, "bn_batches": 1},
    "proxyless": {"stem": 4, "stem_stride": 2, "first": 4, "stage_blocks": [1, 2], "widths": [8, 8], "strides": [2, 1],
                  "feature_mix": 16, "warmup_epochs": 1, "epochs": 2, "batch_size": 20, "arch_every": 1,
                  "train_portion": 0.7, "bn_batches": 2},
}


@pytest.mark.parametrize("algorithm", sorted(TORCHRUN_SEARCHES))
def test_search_under_torchrun(base_config, tmp_path, algorithm):
    """A natural-data search on two gloo ranks: one architecture written (by rank 0, recording 2
    ranks), a training-loss curve near the single-process one (the same batches, paths and
    architecture steps; BatchNorm statistics per rank)."""
    cfg = copy.deepcopy(base_config)
    images = 120 if algorithm == "darts" else 200  # halves of 60: 3 DARTS steps a pass (0.3 s each)
    cfg["search"] = {"algorithms": [algorithm], "natural_images": images, algorithm: TORCHRUN_SEARCHES[algorithm]}
    (tmp_path / "config.json").write_text(json.dumps(validate_config(cfg)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["-m", "dfnas.search", "--config", str(tmp_path / "config.json"), "--algorithm", algorithm,
            "--source", "natural", "--seed", "0"]
    one = subprocess.run([sys.executable, *args, "--out-dir", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun([*args, "--out-dir", str(tmp_path / "two")], env)
    assert two.returncode == 0, two.stderr[-3000:]
    single, ddp = (json.loads((tmp_path / n / "architecture.json").read_text()) for n in ("one", "two"))
    assert single["found_by"]["ranks"] == 1 and ddp["found_by"]["ranks"] == 2
    assert two.stdout.count("architecture written") == 1
    assert not (tmp_path / "two" / "checkpoint.pt").exists()
    curves = [[float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / n / "history.csv")) if r["epoch"]]
              for n in ("one", "two")]
    assert len(curves[0]) == len(curves[1]) == TORCHRUN_SEARCHES[algorithm]["epochs"] + (algorithm == "proxyless")
    assert all(abs(a - b) < 0.1 * a for a, b in zip(*curves)), curves
