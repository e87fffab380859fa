"""Data-parallel training (dfnas.distributed): two gloo ranks on the CPU follow the single-process
run with the same global batch, and `python -m dfnas.retrain` under torchrun writes one metrics file."""

import copy
import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import REPO, dataset_json, quiet
from dfnas.config import validate_config
from dfnas.data import TensorImages
from dfnas.distributed import Dist
from dfnas.imaging import augment_batch
from dfnas.search import run_search
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
    recipe = Recipe(crop_padding=2, flip=True, cutout=3)
    x = torch.rand(7, 1, 8, 8)
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


def train_rank(rank: int, world: int, port: int, out: str) -> None:
    from dfnas import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = distributed.from_env(torch.device("cpu"))
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
    torch.multiprocessing.spawn(train_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=False)
    assert [round(r["train_loss"], 4) for r in ddp["history"]] == pytest.approx(
        [round(r["train_loss"], 4) for r in single], abs=2e-4)
    assert [r["train_top1"] for r in ddp["history"]] == [r["train_top1"] for r in single]
    for name, value in model.state_dict().items():
        assert torch.allclose(ddp["state"][name], value, atol=1e-5), name
    assert single[-1]["train_loss"] < single[0]["train_loss"]  # it trained


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


def test_spos_supernet_under_torchrun(base_config, tmp_path):
    """A natural-data SPOS search on two gloo ranks: one architecture written (by rank 0, recording
    2 ranks), a supernet loss curve near the single-process one (the same paths and batches; BatchNorm
    statistics per rank); DARTS under torchrun is refused with the reason."""
    cfg = copy.deepcopy(base_config)
    cfg["search"] = {"algorithms": ["spos"], "natural_images": 200, "spos": {
        "stem": 4, "stem_stride": 1, "stage_blocks": [1, 2], "widths": [8, 16], "last_conv": 32, "epochs": 3,
        "batch_size": 20, "lr": 0.1, "train_portion": 0.7, "train_flops": None, "bins": 2, "flops_bound": None,
        "population": 4, "generations": 2, "topk": 2, "mutations": 2, "crossovers": 2, "bn_batches": 2}}
    (tmp_path / "config.json").write_text(json.dumps(validate_config(cfg)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["-m", "dfnas.search", "--config", str(tmp_path / "config.json"), "--algorithm", "spos",
            "--source", "natural", "--seed", "0"]
    one = subprocess.run([sys.executable, *args, "--out-dir", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun([*args, "--out-dir", str(tmp_path / "two")], env)
    assert two.returncode == 0, two.stderr[-3000:]
    single, ddp = (json.loads((tmp_path / n / "architecture.json").read_text()) for n in ("one", "two"))
    assert single["found_by"]["ranks"] == 1 and ddp["found_by"]["ranks"] == 2
    assert two.stdout.count("architecture written") == 1
    curves = [[float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / n / "history.csv")) if r["epoch"]]
              for n in ("one", "two")]
    assert len(curves[0]) == len(curves[1]) == 3
    assert all(abs(a - b) < 0.1 * a for a, b in zip(*curves)), curves
    refused = torchrun(["-m", "dfnas.search", "--config", str(tmp_path / "config.json"), "--algorithm", "darts",
                        "--source", "natural", "--out-dir", str(tmp_path / "darts")], env)
    assert refused.returncode != 0
    assert "darts searches on one device; data-parallel search (torchrun" in refused.stderr
    assert "is implemented for spos" in refused.stderr
