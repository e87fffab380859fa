"""The supernet test: every trained search network scored on natural test images, checked against
the search's own held-out figure and against a hand computation."""

import copy
import json

import numpy as np
import pytest
import torch

from conftest import quiet
from dfnas.config import validate_config
from dfnas.data import as_pixels, dataset_from_config
from dfnas.errors import DfnasError
from dfnas.search import run_search
from dfnas.search_data import SearchData, recalibrate_bn
from dfnas.search_result import load_search_network
from dfnas.strategies import get_strategy
from dfnas.supernet_test import supernet_test
from test_search import TINY_DARTS, TINY_PROXYLESS, TINY_SPOS

TINY = {"darts": {**TINY_DARTS, "iterations": 4}, "spos": TINY_SPOS, "proxyless": TINY_PROXYLESS}


def config_for(base_config, algorithm, images=2000):
    cfg = copy.deepcopy(base_config)
    cfg["search"] = {"algorithms": [algorithm], "natural_images": 60, algorithm: TINY[algorithm],
                     "supernet_test": {"images": images}}
    return validate_config(cfg)


@pytest.mark.parametrize("algorithm", ["darts", "spos", "proxyless"])
def test_scores_the_search_network_the_search_scored(algorithm, base_config, tmp_path):
    cfg = config_for(base_config, algorithm)
    arch = run_search(cfg, algorithm, "natural", 0, tmp_path, log=quiet)
    result = supernet_test(cfg, tmp_path / "search_network.pt", tmp_path / "architecture.json", log=quiet)
    # The rebuilt network, its path and its recalibrated BatchNorm give the search's own figure on its
    # held-out part: DARTS and ProxylessNAS report their final network's, SPOS its paths' evolution
    # scores (the found path's is the best score of the last generation).
    if algorithm == "spos":
        history = [r for r in csv_rows(tmp_path / "history.csv") if r["generation"]]
        expected = float(history[-1]["best_score"])
    else:
        expected = arch["found_by"]["heldout_acc"]
    assert result["heldout_acc_rescored"] == pytest.approx(expected, abs=1e-9)
    assert result["heldout_acc"] == arch["found_by"]["heldout_acc"]
    # The fake test split has 100 images, fewer than asked for: all of them are scored.
    assert result["test_images"] == 100 and result["source"] == "natural" and result["algorithm"] == algorithm
    assert result["test_top1"] == pytest.approx(hand_top1(cfg, algorithm, tmp_path, arch), abs=1e-12)


@pytest.mark.parametrize("algorithm", ["darts", "spos"])
def test_a_synthetic_search_is_recalibrated_on_its_synthetic_views(algorithm, base_config, synthetic_set, tmp_path):
    cfg = config_for(base_config, algorithm, images=40)
    arch = run_search(cfg, algorithm, "full", 0, tmp_path, *synthetic_set, log=quiet)
    result = supernet_test(cfg, tmp_path / "search_network.pt", tmp_path / "architecture.json", *synthetic_set,
                           log=quiet)
    # DARTS holds out part of the training split, SPOS scores on the merged set's validation split.
    if algorithm == "spos":
        expected = float([r for r in csv_rows(tmp_path / "history.csv") if r["generation"]][-1]["best_score"])
    else:
        expected = arch["found_by"]["heldout_acc"]
    assert result["heldout_acc_rescored"] == pytest.approx(expected, abs=1e-9)
    # 40 of the 100 test images, 4 per class; the accuracy counts whole images.
    assert result["test_images"] == 40 and result["source"] == "full"
    assert result["test_top1"] == pytest.approx(hand_top1(cfg, algorithm, tmp_path, arch, *synthetic_set, images=40))
    assert round(result["test_top1"] * 40, 9) == int(round(result["test_top1"] * 40))


def test_refuses_an_architecture_of_another_search(base_config, tmp_path):
    cfg = config_for(base_config, "spos")
    run_search(cfg, "spos", "natural", 0, tmp_path / "a", log=quiet)
    other = json.loads((tmp_path / "a" / "architecture.json").read_text())
    other["found_by"]["config_hash"] = "0123456789abcdef"
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(DfnasError, match="other.json was not found by the search that wrote .*search_network.pt"):
        supernet_test(cfg, tmp_path / "a" / "search_network.pt", tmp_path / "other.json", log=quiet)
    # A config with other search keys than the search's would recalibrate on other batches.
    other_cfg = copy.deepcopy(cfg)
    other_cfg["search"]["spos"]["bn_batches"] += 1
    with pytest.raises(DfnasError, match=r"search_network.pt was searched with other search.spos keys than this"):
        supernet_test(other_cfg, tmp_path / "a" / "search_network.pt", tmp_path / "a" / "architecture.json",
                      log=quiet)


def csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def hand_top1(cfg, algorithm, out_dir, arch, dataset=None, labels=None, images=None) -> float:
    """The stage's figure computed here: the network rebuilt by hand, BatchNorm recalibrated on the
    search's recalibration batches, every test image (or a class-balanced subset) classified."""
    saved = load_search_network(out_dir / "search_network.pt")
    strategy = get_strategy(algorithm)
    model, forward = strategy.trained_network(saved["search_args"], saved["space_args"], arch["choices"])
    model.load_state_dict(saved["state_dict"])
    scfg = cfg["search"][algorithm]
    data = SearchData(cfg, arch["found_by"]["source"], 0, dataset, labels, **strategy.data_options(scfg))
    recalibrate_bn(model, data.recalibration_batches(scfg["bn_batches"], scfg["batch_size"], 0),
                   lambda m, x: forward(m, x))
    test = dataset_from_config(cfg).test
    x, y = test.read(torch.arange(len(test)))
    keep = np.ones(len(test), dtype=bool)
    if images is not None:
        from dfnas.runtime import derived_seed
        from dfnas.sampling import stratified_subset

        keep[:] = False
        keep[stratified_subset(test.targets, images, derived_seed(0, "supernet_test") % (2**32))] = True
        assert np.bincount(np.asarray(y)[keep], minlength=10).tolist() == [images // 10] * 10
    with torch.no_grad():
        pred = forward(model, data.norm(as_pixels(x))).argmax(1)
    keep = torch.as_tensor(keep)
    return int((pred[keep] == torch.as_tensor(y)[keep]).sum()) / int(keep.sum())
