"""Latency tables (dfnas.latency): every (block, operation) of the ProxylessNAS space timed, read back as
a CostTable in ms, kept beside a search and reused, checked against the space, and the command line."""

import json

import pytest
import torch
import torch.nn.functional as F

from dfnas.errors import DfnasError
from dfnas.latency import latency_table, measure_key, measure_latency_table, table_from_json
from dfnas.spaces.proxyless import OPS, ZERO, ProxylessNet

TINY = {"in_channels": 1, "num_classes": 10, "stem": 4, "stem_stride": 2, "first": 4, "stage_blocks": [2, 2],
        "widths": [8, 8], "strides": [2, 1], "feature_mix": 16}


def quick_table(space_args, input_shape, device, batch=1):
    return measure_latency_table(space_args, input_shape, device, batch=batch, repeats=1, min_seconds=1e-4)


def test_latency_table_has_every_block_and_operation():
    table = measure_latency_table(TINY, (1, 16, 16), "cpu", repeats=1, min_seconds=1e-4)
    json.dumps(table)
    allowed = ProxylessNet(None, **TINY).allowed
    assert len(table["blocks"]) == 4 and table["ops"] == list(OPS) and table["base"] > 0
    for b, row in enumerate(table["blocks"]):
        for k, ms in enumerate(row):
            if k not in allowed[b]:
                assert ms is None
            elif k == ZERO:
                assert ms == 0.0
            else:
                assert ms > 0
    lat = table_from_json(table)
    path = [5, ZERO, 0, 3]
    onehot = F.one_hot(torch.tensor(path), len(OPS)).double()
    assert lat.expected(onehot).item() == pytest.approx(lat.cost(path))
    assert lat.cost(path) == pytest.approx(table["base"] + table["blocks"][0][5] + table["blocks"][2][0]
                                              + table["blocks"][3][3])


def test_a_measured_table_is_kept_and_reused_while_it_fits(tmp_path, monkeypatch):
    measured = []

    def measure(space_args, input_shape, device, batch=1):
        measured.append(batch)
        return quick_table(space_args, input_shape, device, batch)

    monkeypatch.setattr("dfnas.latency.measure_latency_table", measure)
    hw = {"latency_table": None, "latency_batch": 1}
    messages = []
    first = latency_table(hw, TINY, (1, 16, 16), torch.device("cpu"), tmp_path, messages.append)
    kept = json.loads((tmp_path / "latency_table.json").read_text())
    assert measured == [1] and messages == ["measuring the latency of every (block, operation) on cpu"]
    assert kept["space_args"] == measure_key(TINY) and kept["input_shape"] == [1, 16, 16]
    assert first.unit == "ms" and first.n_blocks == 4 and first.base == kept["base"]
    # A resumed search reads the same table back instead of measuring again ...
    again = latency_table(hw, TINY, (1, 16, 16), torch.device("cpu"), tmp_path, messages.append)
    assert measured == [1] and torch.equal(again.table, first.table)
    # ... but not one measured for another batch or another space.
    latency_table({**hw, "latency_batch": 2}, TINY, (1, 16, 16), torch.device("cpu"), tmp_path, messages.append)
    assert measured == [1, 2]
    latency_table({**hw, "latency_batch": 2}, {**TINY, "feature_mix": 8}, (1, 16, 16), torch.device("cpu"), tmp_path,
                  messages.append)
    assert measured == [1, 2, 2]


def test_a_given_table_must_exist_and_fit_the_space(tmp_path):
    hw = {"latency_table": str(tmp_path / "none.json"), "latency_batch": 1}
    with pytest.raises(DfnasError, match="search.proxyless.hardware.latency_table needs .*none.json, which does not exist"):
        latency_table(hw, TINY, (1, 16, 16), torch.device("cpu"), tmp_path)
    (tmp_path / "lat.json").write_text(json.dumps(quick_table(TINY, (1, 16, 16), "cpu")))
    hw["latency_table"] = str(tmp_path / "lat.json")
    assert latency_table(hw, TINY, (1, 16, 16), torch.device("cpu"), tmp_path).n_blocks == 4
    smaller = {**TINY, "stage_blocks": [1, 2]}
    with pytest.raises(DfnasError, match=r"latency table .*lat.json was measured for space_args .*'stage_blocks': "
                                         r"\[2, 2\].*measure one with python -m dfnas.latency"):
        latency_table(hw, smaller, (1, 16, 16), torch.device("cpu"), tmp_path)
    with pytest.raises(DfnasError, match=r"was measured for input_shape \[1, 16, 16\], the search has \[1, 32, 32\]"):
        latency_table(hw, TINY, (1, 32, 32), torch.device("cpu"), tmp_path)


def test_a_table_from_json_prices_paths_by_hand():
    table = {"base": 1.5, "blocks": [[0.5, 1.0, None, None, None, None, None],
                                     [0.25, 2.0, None, None, None, None, 0.0]]}
    costs = table_from_json(table)
    assert costs.unit == "ms" and costs.allowed == [(0, 1), (0, 1, ZERO)]
    assert costs.cost([1, ZERO]) == pytest.approx(2.5) and costs.cost([0, 1]) == pytest.approx(4.0)
    assert costs.bounds() == pytest.approx((2.0, 4.5))  # zero is the cheapest of block 1
    probs = torch.zeros(2, len(OPS), dtype=torch.float64)
    probs[0, :2] = 0.5
    probs[1, [1, ZERO]] = 0.5
    assert costs.expected(probs).item() == pytest.approx(1.5 + 0.75 + 1.0)


def test_latency_table_command_line(tmp_path, capsys, monkeypatch):
    from dfnas.latency import main

    monkeypatch.setattr("dfnas.cli.set_threads", lambda n: None)  # keep this process's thread count
    space = {"stem": 4, "first": 4, "stage_blocks": [1, 2], "widths": [8, 8], "strides": [2, 1], "feature_mix": 16}
    cfg = {"device": "cpu", "search": {"proxyless": space}}
    main(["--config-json", json.dumps(cfg), "--latency-table", str(tmp_path / "lat.json"), "--threads", "1"])
    table = json.loads((tmp_path / "lat.json").read_text())
    assert table["input_shape"] == [1, 28, 28] and len(table["blocks"]) == 3
    assert "latency table of 3 blocks" in capsys.readouterr().out
