"""SPOS strategy pieces: evolution under a FLOPs bound finds a known optimum; BatchNorm recalibration;
a supernet search that resumes after a kill."""

import pytest
import torch
from torch import nn

from conftest import assert_resumes_after_a_kill
from dfnas.config import validate_config
from dfnas import search_data
from dfnas.search_data import SearchData
from dfnas.strategies import get_strategy, spos
from dfnas.search_data import recalibrate_bn
from dfnas.strategies.spos import Evolution, evolve


def test_evolution_finds_the_best_path_under_the_bound():
    cost = [1, 2, 3, 4]

    def macs(path):
        return sum(cost[c] for c in path)

    calls = []

    def score(path):  # the number of blocks with choice 2; under the bound of 20 the best is 6
        calls.append(path)
        return sum(c == 2 for c in path)

    cfg = Evolution(population=20, generations=15, topk=5, mutations=10, crossovers=10, mutation_prob=0.2)
    best, history = evolve(score, macs, 8, 4, 20, cfg, torch.Generator().manual_seed(0))
    assert score(best) == 6 and macs(best) <= 20
    assert all(macs(p) <= 20 for p in calls)
    assert len(set(calls[:-1])) == len(calls) - 1  # no path scored twice
    assert len(history) == 15 and history[-1]["best_score"] == 6
    assert [h["best_score"] for h in history] == sorted(h["best_score"] for h in history)
    # The first generation is the random population: its mean score is the supernet's held-out accuracy.
    first = calls[:20]
    assert history[0]["mean_score"] == pytest.approx(sum(sum(c == 2 for c in p) for p in first) / 20)
    again, _ = evolve(lambda p: sum(c == 2 for c in p), macs, 8, 4, 20, cfg, torch.Generator().manual_seed(0))
    assert again == best


@pytest.mark.parametrize("prob", [0.1, 0.5])
def test_a_mutant_redraws_each_block_with_the_mutation_probability(prob):
    """40 blocks of 10 choices: a mutant differs from its parent in prob x 40 x 9/10 blocks on average
    (a re-drawn block may draw its old choice); its parent is the nearest path of the first generation."""
    blocks, choices, population, mutants = 40, 10, 20, 40
    calls = []

    def score(path):
        calls.append(path)
        return sum(path)

    cfg = Evolution(population=population, generations=2, topk=5, mutations=mutants, crossovers=0, mutation_prob=prob)
    evolve(score, lambda p: 0.0, blocks, choices, 1.0, cfg, torch.Generator().manual_seed(0))
    first, second = calls[:population], calls[population:population + mutants]
    distance = [min(sum(a != b for a, b in zip(m, p)) for p in first) for m in second]
    expected = prob * blocks * (choices - 1) / choices  # 3.6 and 18
    assert sum(distance) / len(distance) == pytest.approx(expected, abs=0.25 * expected)


def test_bn_recalibration_is_the_average_over_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    model[1].running_mean.fill_(5.0)
    batches = [torch.randn(4, 2, 5, 5) + k for k in range(3)]
    recalibrate_bn(model, batches, lambda m, x: m(x))
    with torch.no_grad():
        feats = [model[0](x) for x in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats])
    vars_ = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats])
    torch.testing.assert_close(model[1].running_mean, means.mean(0))
    torch.testing.assert_close(model[1].running_var, vars_.mean(0))
    assert model[1].momentum == pytest.approx(0.1) and not model.training


TINY_SPOS = {"stem": 4, "stem_stride": 1, "stage_blocks": [1, 2], "widths": [8, 16], "last_conv": 32,
             "epochs": 3, "batch_size": 8, "lr": 0.1, "train_portion": 0.7, "train_flops": None, "bins": 2,
             "flops_bound": None, "population": 6, "generations": 3, "topk": 3, "mutations": 2, "crossovers": 2,
             "bn_batches": 2}


def test_killed_supernet_resumes_with_the_same_result(synthetic_set, tmp_path):
    cfg = validate_config({"device": "cpu", "search": {"algorithms": ["spos"], "spos": TINY_SPOS}})

    def run(out_dir, log):
        data = SearchData(cfg, "full", 2, *synthetic_set, **get_strategy("spos").data_options(cfg["search"]["spos"]))
        result = spos.search(cfg, data, 2, out_dir, "cpu", log)
        # Three supernet epochs, then three generations of the evolution.
        assert [row["epoch"] for row in result.history] == [1, 2, 3, "", "", ""]
        return result.choices, result.history

    assert_resumes_after_a_kill(run, tmp_path)


def test_an_update_budget_gives_every_source_the_same_training(synthetic_set, base_config, tmp_path, monkeypatch):
    """With ``iterations`` the supernet makes exactly that many weight updates on 30 synthetic or 40
    natural images (passes cut short); with ``epochs`` the count follows the data's size."""
    lrs = []
    real_linear_lr = spos.linear_lr
    monkeypatch.setattr(spos, "linear_lr", lambda step, total, base: lrs.append((step, total)) or
                        real_linear_lr(step, total, base))

    def run(source, **budget):
        cfg = validate_config({**base_config, "search": {"natural_images": 40, "spos": {**TINY_SPOS, **budget,
                                                                                        "generations": 1}}})
        files = synthetic_set if source == "full" else ()
        data = SearchData(cfg, source, 0, *files, **get_strategy("spos").data_options(cfg["search"]["spos"]))
        lrs.clear()
        result = spos.search(cfg, data, 0, tmp_path / f"{source}{budget}", "cpu", lambda *_: None)
        return result, data.steps_per_epoch(0, 8), list(lrs)

    synthetic, syn_steps, syn_lrs = run("full", iterations=7)
    natural, nat_steps, nat_lrs = run("natural", iterations=7)
    assert (syn_steps, nat_steps) == (3, 3)  # 30 synthetic training images and 28 natural ones, batch 8
    for result, lr_calls in ((synthetic, syn_lrs), (natural, nat_lrs)):
        assert result.found_by["weight_updates"] == 7 and lr_calls == [(k, 7) for k in range(7)]
        assert [row["epoch"] for row in result.history if row["epoch"] != ""] == [1, 2, 3]  # the third pass cut at 1
    by_epochs, steps, lr_calls = run("natural", epochs=2)
    assert by_epochs.found_by["weight_updates"] == 2 * steps == len(lr_calls)


def test_paths_are_scored_on_a_held_out_part_read_once(synthetic_set, monkeypatch):
    """The scorer reads the held-out part once for every path it scores, and scores exactly as
    streaming it for each path does; too large for its byte budget, it is streamed."""
    from dfnas.spaces.shufflenet import ShuffleNetOneShot, flops_table, sample_path, space_args
    from dfnas.strategies.spos import path_scorer

    cfg = validate_config({"device": "cpu", "search": {"algorithms": ["spos"], "spos": TINY_SPOS}})
    s = cfg["search"]["spos"]
    data = SearchData(cfg, "full", 0, *synthetic_set, **get_strategy("spos").data_options(s))
    args = space_args(s, data.input_shape, data.num_classes)
    torch.manual_seed(0)
    model = ShuffleNetOneShot(None, **args, dropout=0.0)
    table, gen = flops_table(args, data.input_shape), torch.Generator().manual_seed(0)
    paths = [sample_path(table, gen) for _ in range(4)]
    read = []  # images read from the held-out split (the validation split, 10 images)
    for name in ("read", "read_stored"):
        real = getattr(data.heldout, name)
        monkeypatch.setattr(data.heldout, name, lambda idx, *a, real=real: read.append(len(idx)) or real(idx, *a))
    n = len(data.halves[1])
    # Kept as stored (uint8 pixels: 10 x 784 bytes + 10 x 10 float32 targets = 8,240 bytes).
    assert data.heldout_on("cpu", 8, 8240) is not None and data.heldout_on("cpu", 8, 8239) is None
    read.clear()
    score = path_scorer(model, data, s, 0, "cpu", cache_bytes=1 << 30)
    cached = [score(p) for p in paths]
    assert sum(read) == 1 + n  # one image to size it, then the part once
    score = path_scorer(model, data, s, 0, "cpu", cache_bytes=0)
    streamed = [score(p) for p in paths]
    assert sum(read) == 1 + n + len(paths) * n and cached == streamed
    # Recalibration batches above their byte budget are drawn again for every path: the same scores.
    monkeypatch.setattr(search_data, "HOLD_BYTES", 0)
    draws = []
    real_batches = data.batches
    monkeypatch.setattr(data, "batches", lambda *a, **k: draws.append(a) or real_batches(*a, **k))
    score = path_scorer(model, data, s, 0, "cpu", cache_bytes=1 << 30)
    assert [score(p) for p in paths] == cached and len(draws) == len(paths)
