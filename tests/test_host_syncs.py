"""Training and search steps read nothing back to the host, so that a GPU never waits on Python
in the middle of an epoch.

`host_reads` counts, by call site, every read of a tensor's value that dfnas's own code makes
(``item``, ``cpu``, ``tolist``, ``numpy``, ``float()``, ``int()``, ``bool()``). Each loop runs the
same number of epochs once with few and once with many steps per epoch (a smaller batch): the
counts must be equal, i.e. reads happen per epoch (its log line, checkpoint, held-out score), never
per step.

Paths and candidates are drawn on the host from seeded CPU generators, so that a seed gives the
same search on any device, and priced with a host table of multiply-adds; reads inside those
functions (`HOST_SIDE`) touch no GPU and are not counted. ProxylessNAS draws from its architecture probabilities, which live on the
device: one read of them per step (``cpu()``) is that design's price, and nothing else."""

import collections
import copy
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dfnas.config import validate_config
from dfnas.data import TensorImages
from dfnas.search_data import SearchData
from dfnas.strategies import darts, get_strategy, spos
from dfnas.strategies.proxyless import search as search_proxyless
from dfnas.train import Recipe, train_classifier

READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")
PACKAGE = f"{os.sep}dfnas{os.sep}"
# Functions that read host tensors only: draws from CPU generators (SPOS and ProxylessNAS paths, the
# evolution's candidates) and the multiply-add table's prices.
HOST_SIDE = {"sample_path", "sample_pairs", "draw", "mutate", "crossover", "cost", "bounds"}


def inside_host_side(frame) -> bool:
    while frame is not None and PACKAGE in frame.f_code.co_filename:
        if frame.f_code.co_name in HOST_SIDE:
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def host_reads(monkeypatch):
    """A Counter of ``"read file:line function"`` for reads made by dfnas code while the test runs, and
    of ``"blocking to file:line function"`` for its copies to a device that wait."""
    calls = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def read(self, *args, _name=name, _original=original, **kwargs):
            frame = sys._getframe(1)
            host_side = _name != "cpu" and inside_host_side(frame)  # cpu(): a device read in sample_pairs
            if PACKAGE in frame.f_code.co_filename and not host_side:
                calls[f"{_name} {Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)

    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        """A copy to a named device without ``non_blocking=True``: on a GPU, a host-to-device copy that
        waits for the stream (the CPU stands in for the device here)."""
        frame = sys._getframe(1)
        moves = kwargs.get("device") is not None or any(isinstance(a, (torch.device, str)) for a in args)
        if moves and not kwargs.get("non_blocking") and PACKAGE in frame.f_code.co_filename:
            calls[f"blocking to {Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}"] += 1
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return calls


def reads_of(host_reads, run) -> collections.Counter:
    host_reads.clear()
    run()
    return collections.Counter(host_reads)


def test_supervised_training_reads_once_per_epoch(host_reads):
    torch.manual_seed(0)
    images, labels = (torch.rand(48, 1, 8, 8) * 255).to(torch.uint8), torch.arange(48) % 3

    def train(batch_size):
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        recipe = Recipe(epochs=2, batch_size=batch_size, crop_padding=1, cutout=2)
        return reads_of(host_reads, lambda: train_classifier(model, TensorImages(images, labels), recipe, "cpu", 0,
                                                             [0.5], [0.5], log=lambda *_: None))

    few, many = train(24), train(4)  # 2 and 12 steps per epoch
    assert few == many and sum(many.values()) > 0  # the epoch lines do read


def search_reads(host_reads, synthetic_set, tmp_path, algorithm: str, search: dict) -> collections.Counter:
    """The reads of one search of ``algorithm`` (config ``search``) on the synthetic set."""
    module = {"darts": darts, "spos": spos}[algorithm]
    cfg = validate_config({"device": "cpu", "search": search})
    data = SearchData(cfg, "full", 0, *synthetic_set, device="cpu",  # views rendered on the device, as in dfnas.search
                      **get_strategy(algorithm).data_options(cfg["search"][algorithm]))
    out = tmp_path / str(len(list(tmp_path.iterdir())))
    return reads_of(host_reads, lambda: module.search(cfg, data, 0, out, "cpu", lambda *_: None))


def test_darts_search_reads_once_per_epoch(synthetic_set, host_reads, tmp_path):
    def search(batch_size):
        return search_reads(host_reads, synthetic_set, tmp_path, "darts", {"darts": {
            "cells": 3, "channels": 4, "epochs": 2, "batch_size": batch_size, "bn_batches": 1}})

    assert search(12) == search(4)


def test_spos_supernet_and_evolution_read_per_epoch_and_per_candidate(synthetic_set, host_reads, tmp_path):
    from test_spos_strategy import TINY_SPOS

    def search(batch_size):
        return search_reads(host_reads, synthetic_set, tmp_path, "spos", {"algorithms": ["spos"], "spos": {
            **TINY_SPOS, "batch_size": batch_size, "epochs": 2, "generations": 2}})

    assert search(10) == search(4)


def test_proxyless_search_reads_only_its_path_draws(base_config, host_reads, tmp_path):
    from test_proxyless_strategy import TINY_SEARCH

    def search(batch_size):
        cfg = copy.deepcopy(base_config)
        cfg["search"] = {"natural_images": 40, "channels_last": False,
                         "proxyless": {**TINY_SEARCH, "batch_size": batch_size}}
        cfg = validate_config(cfg)
        data = SearchData(cfg, "natural", 0, train_portion=0.6)
        reads = reads_of(host_reads, lambda: search_proxyless(cfg, data, 0, tmp_path / str(batch_size), "cpu",
                                                              log=lambda *_: None))
        # 24 weight images; an architecture step after each weight step in the two search passes
        return reads, 3 * -(-24 // batch_size) + 2 * -(-24 // batch_size)

    (few, few_steps), (many, many_steps) = search(12), search(4)
    draws = [site for site in many if site.endswith((" sample_path", " sample_pairs"))]
    assert len(draws) == 2 and all(site.startswith("cpu ") for site in draws)  # one read per draw
    assert sum(many[site] for site in draws) - sum(few[site] for site in draws) == many_steps - few_steps
    for site in draws:
        few.pop(site), many.pop(site)
    assert few == many


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: torch's sync debug mode watches a GPU stream")
def test_cuda_steps_do_not_synchronize(synthetic_set, tmp_path):
    """The complement of the counts above on a GPU, where a blocking device-to-host copy or a
    synchronizing kernel (``nonzero``, a boolean mask index) would stall the stream without any
    Python-level read: under ``torch.cuda.set_sync_debug_mode("warn")`` a supervised training and a
    DARTS search warn as often with many steps per epoch as with few. Each runs once uncounted
    first: a process's first steps at a shape create library handles and autotune (cuDNN), which
    synchronizes once."""
    import itertools
    import warnings

    device = torch.device("cuda")
    torch.manual_seed(0)
    images, labels = (torch.rand(48, 1, 8, 8) * 255).to(torch.uint8), torch.arange(48) % 3

    def syncs(run) -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    def train(batch_size):
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        recipe = Recipe(epochs=2, batch_size=batch_size, crop_padding=1, cutout=2)
        return syncs(lambda: train_classifier(model, TensorImages(images, labels), recipe, device, 0, [0.5], [0.5],
                                              log=lambda *_: None))

    def search(batch_size):
        cfg = validate_config({"device": "cuda", "precision": "fp32", "search": {"darts": {
            "cells": 3, "channels": 4, "epochs": 2, "batch_size": batch_size, "bn_batches": 1}}})
        data = SearchData(cfg, "full", 0, *synthetic_set, device=device,
                          **get_strategy("darts").data_options(cfg["search"]["darts"]))
        out = tmp_path / f"darts{next(runs)}"  # a fresh directory: a finished one would be resumed
        return syncs(lambda: darts.search(cfg, data, 0, out, device, lambda *_: None))

    runs = itertools.count()
    for run in (train, search):
        run(4), run(24 if run is train else 12)  # warm-up: handles, autotuning of every shape
    assert train(24) == train(4)  # 2 and 12 steps per epoch
    assert search(12) == search(4)
