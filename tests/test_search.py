"""The search stage (dfnas.search): each algorithm through run_search on a synthetic variant and on
natural data, the files it writes, the random baseline, the strategy registry and the command line.

The algorithms themselves, and their resumption after a kill, are tested in test_<algorithm>_strategy.py;
the data they see in test_search_data.py."""

import copy
import csv
import inspect
import json

import pytest
import torch

from conftest import dataset_json, quiet
from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.search import main, run_search
from dfnas.search_data import SearchData
from dfnas.spaces import get_space
from dfnas.strategies import get_strategy, strategy_names

TINY_DARTS = {"cells": 3, "channels": 4, "epochs": 3, "batch_size": 8}


def search_config(base=None, **darts):
    cfg = copy.deepcopy(base) if base else {"device": "cpu"}
    cfg["search"] = {"natural_images": 40, "darts": {**TINY_DARTS, **darts}}
    return validate_config(cfg)


def test_darts_on_a_synthetic_variant(synthetic_set, tmp_path):
    dataset, labels = synthetic_set
    arch = run_search(search_config(), "darts", "full", 0, tmp_path, dataset, labels, log=quiet)
    assert arch["space"] == "darts" and arch["space_args"] == {"steps": 4, "multiplier": 4}
    assert len(arch["choices"]["normal"]) == 8 and arch["choices"]["normal_concat"] == [2, 3, 4, 5]
    assert all(op != "none" for op, _ in arch["choices"]["normal"] + arch["choices"]["reduce"])
    found = arch["found_by"]
    assert found["source"] == "full" and found["data_images"] == 30 and found["teacher_sha256"]
    assert json.loads((tmp_path / "architecture.json").read_text())["choices"] == arch["choices"]
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    probs = [float(rows[-1][f"alpha_normal_0_{op}"]) for op in
             ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_darts_on_natural_data(base_config, tmp_path):
    arch = run_search(search_config(base_config), "darts", "natural", 0, tmp_path, log=quiet)
    assert arch["found_by"]["data_images"] == 40
    assert arch["found_by"]["search_network"]["in_channels"] == 1
    assert "teacher_sha256" not in arch["found_by"]


def test_synthetic_source_needs_its_files(tmp_path):
    with pytest.raises(DfnasError, match="source 'full' needs --dataset and --labels"):
        run_search(search_config(), "darts", "full", 0, tmp_path, log=quiet)


TINY_SPOS = {"stem": 4, "stem_stride": 1, "stage_blocks": [1, 2], "widths": [8, 16], "last_conv": 32,
             "epochs": 2, "batch_size": 8, "lr": 0.1, "train_portion": 0.7, "train_flops": None, "bins": 2,
             "flops_bound": None, "population": 6, "generations": 3, "topk": 3, "mutations": 2, "crossovers": 2,
             "bn_batches": 2}


def spos_config(base=None, **spos):
    cfg = copy.deepcopy(base) if base else {"device": "cpu"}
    cfg["search"] = {"algorithms": ["spos"], "natural_images": 40, "spos": {**TINY_SPOS, **spos}}
    return validate_config(cfg)


def test_spos_on_a_synthetic_variant(synthetic_set, tmp_path):
    from dfnas.spaces.shufflenet import ShuffleNetOneShot, flops_table

    dataset, labels = synthetic_set
    table = flops_table({k: TINY_SPOS[k] for k in ("stem", "stem_stride", "stage_blocks", "widths", "last_conv")}
                       | {"in_channels": 1, "num_classes": 10}, (1, 28, 28))
    lo, hi = table.bounds()
    bound = (lo + hi) / 2
    arch = run_search(spos_config(flops_bound=bound), "spos", "full", 0, tmp_path, dataset, labels, log=quiet)
    path = arch["choices"]["path"]
    assert arch["space"] == "spos" and len(path) == 3 and all(0 <= c <= 3 for c in path)
    assert arch["found_by"]["multiply_adds"] == table.cost(path) <= bound
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [r["epoch"] for r in rows[:2]] == ["1", "2"] and [r["generation"] for r in rows[2:]] == ["1", "2", "3"]
    assert (tmp_path / "architecture.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "checkpoint.pt").exists()
    # The supernet trains on all 30 training images; candidates are scored on the 10 validation images.
    assert arch["found_by"]["data_images"] == 40
    saved = torch.load(tmp_path / "search_network.pt", weights_only=True)
    assert saved["space"] == "spos" and saved["found_by"]["source"] == "full"
    assert set(saved["state_dict"]) == set(ShuffleNetOneShot(None, **saved["search_args"]).state_dict())


def test_spos_random_baseline_respects_the_bound_and_retrains(base_config, tmp_path):
    from dfnas.retrain import retrain

    cfg = spos_config(base_config, flops_bound=None)
    cfg["retrain"] = {"train_images": 50, "epochs": 1, "batch_size": 25}
    cfg = validate_config(cfg)
    arch = run_search(cfg, "spos", "random", 4, tmp_path / "r", log=quiet,
                     dataset_json=dataset_json(cfg, tmp_path))
    assert len(arch["choices"]["path"]) == 3
    metrics = retrain(cfg, tmp_path / "r" / "architecture.json", tmp_path / "m.json", log=quiet)
    assert metrics["multiply_adds"] == arch["found_by"]["multiply_adds"]
    assert metrics["space"] == "spos" and 0 <= metrics["top1"] <= 1


TINY_PROXYLESS = {"stem": 4, "stem_stride": 2, "first": 4, "stage_blocks": [1, 2], "widths": [8, 8], "strides": [2, 1],
                  "feature_mix": 16, "warmup_epochs": 1, "epochs": 1, "batch_size": 8, "arch_every": 1}


def proxyless_config(base=None, **over):
    cfg = copy.deepcopy(base) if base else {"device": "cpu"}
    cfg["search"] = {"algorithms": ["proxyless"], "proxyless": {**TINY_PROXYLESS, **over}}
    return validate_config(cfg)


def test_proxyless_on_a_synthetic_variant_then_retrained(synthetic_set, base_config, tmp_path):
    from dfnas.retrain import retrain
    from dfnas.spaces.proxyless import OPS

    arch = run_search(proxyless_config(), "proxyless", "full", 0, tmp_path / "s", *synthetic_set, log=quiet)
    ops = arch["choices"]["ops"]
    assert arch["space"] == "proxyless" and len(ops) == 3 and all(0 <= c < len(OPS) for c in ops)
    assert arch["found_by"]["hardware_metric"] == "flops" and arch["found_by"]["data_images"] == 30
    rows = list(csv.DictReader(open(tmp_path / "s" / "history.csv")))
    assert [r["phase"] for r in rows] == ["warmup", "search"]
    assert (tmp_path / "s" / "architecture.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "s" / "search_network.pt").exists() and not (tmp_path / "s" / "checkpoint.pt").exists()
    cfg = proxyless_config(base_config)
    cfg["retrain"] = {"train_images": 50, "epochs": 1, "batch_size": 25}
    cfg = validate_config(cfg)
    metrics = retrain(cfg, tmp_path / "s" / "architecture.json", tmp_path / "m.json", log=quiet)
    assert metrics["multiply_adds"] == arch["found_by"]["multiply_adds"]
    random = run_search(cfg, "proxyless", "random", 1, tmp_path / "r", log=quiet,
                     dataset_json=dataset_json(cfg, tmp_path))
    assert len(random["choices"]["ops"]) == 3 and random["choices"]["ops"][0] != OPS.index("zero")
    net_macs = retrain(cfg, tmp_path / "r" / "architecture.json", tmp_path / "r.json", log=quiet)["multiply_adds"]
    assert random["found_by"]["multiply_adds"] == net_macs


# ---------------------------------------------------------------------------------------------
# The strategy registry and the command line


@pytest.mark.parametrize("algorithm, channels_last", [("darts", True), ("spos", True), ("proxyless", True),
                                                     ("spos", False)])
def test_search_networks_train_in_the_configured_memory_format(algorithm, channels_last, synthetic_set, tmp_path,
                                                               monkeypatch):
    """``search.channels_last`` puts every search network and its batches in NHWC (SPOS too: 0.76-0.89
    of the contiguous step time on a 2-core CPU): the activations entering its convolutions of more
    than one input channel are NHWC, or all NCHW when it is false."""
    formats = set()

    def record(conv, args):
        x = args[0]
        if x.dim() == 4 and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1 and x.requires_grad:
            # Channels vary faster than columns (NHWC, and a channel split or shuffle of it) or slower.
            formats.add("nhwc" if x.stride(1) < x.stride(3) else "nchw")

    real = SearchData.in_memory_format

    def hooked(self, model):
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_pre_hook(record)
        return real(self, model)

    monkeypatch.setattr(SearchData, "in_memory_format", hooked)
    tiny = {"darts": search_config(), "spos": spos_config(), "proxyless": proxyless_config()}[algorithm]
    cfg = validate_config({**tiny, "search": {**tiny["search"], "channels_last": channels_last,
                                              algorithm: {**tiny["search"][algorithm], "epochs": 1}}})
    run_search(cfg, algorithm, "full", 0, tmp_path, *synthetic_set, log=quiet)
    assert formats == ({"nhwc"} if channels_last else {"nchw"})


def test_every_strategy_searches_a_registered_space_with_data_it_can_get():
    assert strategy_names() == ["darts", "spos", "proxyless"]
    cfg = validate_config({"device": "cpu"})
    for name in strategy_names():
        strategy = get_strategy(name)
        assert strategy.name == name and get_space(strategy.space).name == strategy.space
        options = strategy.data_options(cfg["search"][name])
        assert set(options) <= set(inspect.signature(SearchData).parameters) - {"cfg", "source", "seed"}
    assert get_strategy("spos").data_options(cfg["search"]["spos"])["synthetic_holdout"] == "val"
    with pytest.raises(DfnasError, match=r"unknown search algorithm 'enas' \(known: darts, proxyless, spos\)"):
        get_strategy("enas")


def cli_config(base_config):
    return json.dumps({"device": "cpu", "data": base_config["data"], "search": {"darts": TINY_DARTS}})


def test_command_line_writes_the_random_baseline(base_config, tmp_path, monkeypatch, capsys):
    from dfnas.spaces.darts import random_choices

    monkeypatch.setattr("dfnas.cli.set_threads", lambda n: None)  # keep this process's thread count
    args = ["--config-json", cli_config(base_config), "--algorithm", "darts", "--source", "random", "--seed", "5",
            "--out-dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit):
        main(args)
    assert "the random baseline needs --dataset-json" in capsys.readouterr().err
    described = dataset_json(validate_config(base_config), tmp_path)
    main(args + ["--dataset-json", str(described)])
    arch = json.loads((tmp_path / "r" / "architecture.json").read_text())
    assert arch["space"] == "darts" and arch["choices"] == random_choices(5)
    assert arch["found_by"]["source"] == "random" and arch["found_by"]["seed"] == 5
    assert (tmp_path / "r" / "history.csv").read_text().strip() == "epoch"  # no search, no rows
    assert (tmp_path / "r" / "architecture.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "r" / "search_network.pt").exists()


def test_command_line_errors_are_one_line(base_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("dfnas.cli.set_threads", lambda n: None)
    with pytest.raises(SystemExit) as exit_:
        main(["--config-json", cli_config(base_config), "--algorithm", "darts", "--source", "full",
              "--out-dir", str(tmp_path / "s")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("dfnas: error: source 'full' needs --dataset and --labels (its synthetic set "
                                       "and soft labels)\n")
    assert not (tmp_path / "s" / "architecture.json").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["--config-json", cli_config(base_config), "--algorithm", "enas", "--source", "random",
              "--out-dir", str(tmp_path / "s")])
    assert exit_.value.code == 2 and "invalid choice: 'enas'" in capsys.readouterr().err


def test_a_darts_warm_up_as_long_as_an_update_budget_is_one_line(base_config, tmp_path):
    """3 updates on 20 + 20 natural images at batch 8 are 2 epochs: a warm-up of 2 leaves the
    architecture no step (the config check sees epochs only), a warm-up of 1 searches."""
    cfg = search_config(base_config, iterations=3, arch_warmup_epochs=2)
    with pytest.raises(DfnasError) as err:
        run_search(cfg, "darts", "natural", 0, tmp_path / "two", log=quiet)
    assert str(err.value) == ("config key 'search.darts.arch_warmup_epochs': 2 warm-up epochs of the 2 that "
                              "search.darts.iterations 3 make on 20 images leave the architecture no step; lower it")
    arch = run_search(search_config(base_config, iterations=3, arch_warmup_epochs=1), "darts", "natural", 0,
                      tmp_path / "one", log=quiet)
    assert arch["found_by"]["weight_updates"] == 3
