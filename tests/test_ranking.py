"""The SPOS ranking check: Kendall tau by hand, and the check run on a supernet searched on synthetic data."""

import copy
import csv
import json
import math

import pytest

from conftest import quiet
from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.ranking import rank
from dfnas.search import run_search
from dfnas.stats import kendall_tau_b


TINY_SPOS = {"stem": 4, "stem_stride": 1, "stage_blocks": [1, 2], "widths": [8, 16], "last_conv": 32,
             "epochs": 2, "batch_size": 8, "lr": 0.1, "train_flops": None, "bins": 1, "flops_bound": None,
             "population": 4, "generations": 1, "topk": 2, "mutations": 1, "crossovers": 1, "bn_batches": 2,
             "ranking": {"paths": 6, "natural_images": 60}}


@pytest.fixture(scope="module")
def searched(synthetic_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("spos")
    cfg = validate_config({"device": "cpu", "search": {"algorithms": ["spos"], "spos": TINY_SPOS}})
    run_search(cfg, "spos", "full", 0, out, *synthetic_set, log=quiet)
    return out / "search_network.pt"


def ranking_config(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["search"] = {"algorithms": ["spos"], "spos": TINY_SPOS}
    return validate_config(cfg)


def test_ranking_scores_fixed_paths_on_both_domains(searched, synthetic_set, base_config, tmp_path):
    from dfnas.spaces.shufflenet import flops_table

    cfg = ranking_config(base_config)
    result = rank(cfg, searched, *synthetic_set, tmp_path, log=quiet)
    rows = result["paths"]
    assert len(rows) == 6 and len({r["path"] for r in rows}) == 6
    assert result["synthetic_images"] == 10 and result["natural_images"] == 60
    # accuracies are counts over 10 synthetic and 60 natural images
    assert all(round(r["synthetic_acc"] * 10, 6).is_integer() and round(r["natural_acc"] * 60, 6).is_integer()
               for r in rows)
    syn, nat = [r["synthetic_acc"] for r in rows], [r["natural_acc"] for r in rows]
    tau = kendall_tau_b(syn, nat)
    assert result["kendall_tau"] == (None if math.isnan(tau) else tau)
    table = flops_table({k: TINY_SPOS[k] for k in ("stem", "stem_stride", "stage_blocks", "widths", "last_conv")}
                       | {"in_channels": 1, "num_classes": 10}, (1, 28, 28))
    assert all(r["multiply_adds"] == table.cost(tuple(map(int, r["path"]))) for r in rows)
    written = list(csv.DictReader(open(tmp_path / "ranking.csv")))
    assert [w["path"] for w in written] == [r["path"] for r in rows]
    assert json.loads((tmp_path / "ranking.json").read_text())["paths"] == rows
    assert (tmp_path / "ranking.png").read_bytes()[:4] == b"\x89PNG"
    # the same config and seed give the same file
    again = rank(cfg, searched, *synthetic_set, tmp_path / "again", log=quiet)
    assert again["paths"] == rows


def test_ranking_scores_alike_with_recalibration_batches_read_again_per_path(searched, synthetic_set, base_config,
                                                                              tmp_path, monkeypatch):
    """Above their byte budget (none here), the recalibration batches of both domains are read again
    for every path, and every score is as when they are held."""
    from dfnas import search_data

    cfg = ranking_config(base_config)
    held = rank(cfg, searched, *synthetic_set, tmp_path / "held", log=quiet)["paths"]
    made = []
    real = search_data.HeldBatches.__init__

    def spy(self, make, nbytes, device=None, max_bytes=None):
        made.append(self)
        real(self, make, nbytes, device, max_bytes)

    monkeypatch.setattr(search_data, "HOLD_BYTES", 0)
    monkeypatch.setattr(search_data.HeldBatches, "__init__", spy)
    again = rank(cfg, searched, *synthetic_set, tmp_path / "again", log=quiet)["paths"]
    assert len(made) == 2 and all(m.held is None for m in made)  # synthetic and natural, neither held
    assert again == held


def test_ranking_paths_respect_the_flops_bound(searched, synthetic_set, base_config, tmp_path):
    from dfnas.spaces.shufflenet import flops_table

    table = flops_table({k: TINY_SPOS[k] for k in ("stem", "stem_stride", "stage_blocks", "widths", "last_conv")}
                       | {"in_channels": 1, "num_classes": 10}, (1, 28, 28))
    lo, hi = table.bounds()
    cfg = ranking_config(base_config)
    cfg["search"]["spos"]["flops_bound"] = lo + (hi - lo) * 0.6
    result = rank(cfg, searched, *synthetic_set, tmp_path, log=quiet)
    assert all(r["multiply_adds"] <= lo + (hi - lo) * 0.6 for r in result["paths"])


def test_ranking_refuses_a_darts_network(synthetic_set, base_config, tmp_path):
    cfg = validate_config({"device": "cpu", "search": {"natural_images": 40, "darts": {
        "cells": 3, "channels": 4, "epochs": 1, "batch_size": 8}}})
    run_search(cfg, "darts", "full", 0, tmp_path, *synthetic_set, log=quiet)
    with pytest.raises(DfnasError, match="a darts search network; the ranking check needs a SPOS supernet"):
        rank(ranking_config(base_config), tmp_path / "search_network.pt", *synthetic_set, tmp_path / "r", log=quiet)
    (tmp_path / "bad.pt").write_bytes(b"not a file")
    with pytest.raises(DfnasError, match="not a readable search network"):
        rank(ranking_config(base_config), tmp_path / "bad.pt", *synthetic_set, tmp_path / "r", log=quiet)
