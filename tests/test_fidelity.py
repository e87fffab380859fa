"""The fidelity stage (dfnas.fidelity): architectures spread over sizes, brief training on natural and
synthetic sources with one budget, resumption after a kill, and its command line."""

import copy
import json

import pytest

from conftest import dataset_json, quiet
from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.fidelity import draw_architectures, main, proxy_scores, spread

TINY = {"stem": 4, "stem_stride": 1, "stage_blocks": [1, 2], "widths": [8, 16], "last_conv": 32,
        "flops_bound": None}


def fidelity_config(base=None, **fidelity):
    cfg = copy.deepcopy(base) if base else {"device": "cpu"}
    cfg["search"] = {"algorithms": ["spos"], "natural_images": 60, "spos": TINY}
    cfg["fidelity"] = {"architectures": 4, "candidates": 3, "steps": 4, "batch_size": 10, **fidelity}
    return validate_config(cfg)


def test_spread_takes_evenly_spaced_ranks():
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]  # sorted: 1 2 3 5 7 8 9 at indices 1 5 3 0 4 6 2
    assert spread(values, 4) == [1, 3, 4, 2]  # ranks 0, 2, 4, 6
    assert spread(values, 2) == [1, 2] and spread(values, 1) == [0]
    assert sorted(spread(values, 10)) == list(range(7))


def test_draw_is_spread_over_sizes_and_seeded():
    cfg = fidelity_config()
    archs = draw_architectures(cfg, "spos", (1, 28, 28), 10, log=quiet)
    assert [a["found_by"]["index"] for a in archs] == [0, 1, 2, 3]
    macs = [a["found_by"]["multiply_adds"] for a in archs]
    assert macs == sorted(macs) and macs[0] < macs[-1]
    assert len({json.dumps(a["choices"]) for a in archs}) == 4
    assert all(a["space"] == "spos" and a["found_by"]["source"] == "fidelity" for a in archs)
    # The 4 are the smallest, the largest and two between of 12 distinct draws.
    again = draw_architectures(cfg, "spos", (1, 28, 28), 10, log=quiet)
    assert [a["choices"] for a in again] == [a["choices"] for a in archs]
    other = draw_architectures(validate_config({**copy.deepcopy(cfg), "seed": 1}), "spos", (1, 28, 28), 10,
                               log=quiet)
    assert [a["choices"] for a in other] != [a["choices"] for a in archs]


def test_an_unbounded_draw_ignores_the_search_flops_bound():
    """``fidelity.bounded: false`` draws SPOS architectures from the whole space: with a bound halfway
    through the space's multiply-adds, the bounded draw keeps to the smaller paths and the unbounded
    one is the draw of a search without a bound."""
    from dfnas.spaces.shufflenet import flops_table, space_args

    free = fidelity_config()
    whole = draw_architectures(free, "spos", (1, 28, 28), 10, log=quiet)
    lo, hi = flops_table(space_args(free["search"]["spos"], (1, 28, 28), 10), (1, 28, 28)).bounds()
    bounded = copy.deepcopy(free)
    bounded["search"]["spos"]["flops_bound"] = (lo + hi) // 2
    kept = draw_architectures(bounded, "spos", (1, 28, 28), 10, log=quiet)
    bounded["fidelity"]["bounded"] = False
    unbounded = draw_architectures(bounded, "spos", (1, 28, 28), 10, log=quiet)
    assert [a["choices"] for a in unbounded] == [a["choices"] for a in whole]
    assert kept[-1]["found_by"]["multiply_adds"] < whole[-1]["found_by"]["multiply_adds"]


def test_proxy_on_natural_and_synthetic_with_one_budget(synthetic_set, base_config, tmp_path):
    cfg = fidelity_config(base_config)
    archs = draw_architectures(cfg, "spos", (1, 28, 28), 10, log=quiet)
    natural = proxy_scores(cfg, archs, "natural", log=quiet)
    # 60 natural images: 48 train, 12 held out; accuracies are multiples of 1/12.
    assert natural["train_images"] == 48 and natural["heldout_images"] == 12 and natural["steps"] == 4
    assert [r["index"] for r in natural["scores"]] == [0, 1, 2, 3]
    assert all(round(r["val_acc"] * 12, 6).is_integer() for r in natural["scores"])
    synthetic = proxy_scores(cfg, archs, "full", *synthetic_set, log=quiet)
    # The synthetic set's validation split (10 images) scores, its training split (30) trains.
    assert synthetic["train_images"] == 30 and synthetic["heldout_images"] == 10
    assert all(round(r["val_acc"] * 10, 6).is_integer() for r in synthetic["scores"])
    assert synthetic["teacher_sha256"]
    # The same seed per architecture: a rerun gives the same scores.
    assert proxy_scores(cfg, archs, "natural", log=quiet)["scores"][0]["val_acc"] == natural["scores"][0]["val_acc"]


class Killed(Exception):
    pass


def test_a_killed_proxy_job_resumes_after_its_last_architecture(base_config, tmp_path):
    cfg = fidelity_config(base_config)
    archs = draw_architectures(cfg, "spos", (1, 28, 28), 10, log=quiet)
    reference = proxy_scores(cfg, archs, "natural", log=quiet)
    out = tmp_path / "proxy_natural.json"

    def kill(msg):
        if msg.startswith("architecture 2/4"):
            raise Killed(msg)

    with pytest.raises(Killed):
        proxy_scores(cfg, archs, "natural", out=out, log=kill)
    assert len(json.loads((tmp_path / "proxy_natural.json.partial").read_text())["rows"]) == 1
    messages = []
    resumed = proxy_scores(cfg, archs, "natural", out=out, log=messages.append)
    assert any(m.startswith("resuming after 1 of 4 architectures") for m in messages), messages
    assert not any(m.startswith("architecture 1/4") for m in messages)
    assert [r["val_acc"] for r in resumed["scores"]] == [r["val_acc"] for r in reference["scores"]]
    # Progress of another budget is not reused.
    messages = []
    proxy_scores(fidelity_config(base_config, steps=3), archs, "natural", out=out, log=messages.append)
    assert any("belongs to another run" in m for m in messages), messages


def test_command_line_draws_and_scores(base_config, tmp_path, capsys):
    cfg = fidelity_config(base_config)
    config = json.dumps(cfg)
    data_json = dataset_json(cfg, tmp_path)
    main(["--config-json", config, "draw", "--space", "spos", "--dataset-json", str(data_json),
          "--out-dir", str(tmp_path / "spos")])
    listed = json.loads((tmp_path / "spos" / "architectures.json").read_text())
    assert len(listed) == 4 and json.loads((tmp_path / "spos" / "arch3.json").read_text()) == listed[3]
    main(["--config-json", config, "proxy", "--space", "spos", "--source", "natural", "--architectures",
          str(tmp_path / "spos" / "architectures.json"), "--out", str(tmp_path / "spos" / "proxy_natural.json")])
    result = json.loads((tmp_path / "spos" / "proxy_natural.json").read_text())
    assert len(result["scores"]) == 4 and not (tmp_path / "spos" / "proxy_natural.json.partial").exists()
    with pytest.raises(SystemExit):
        main(["--config-json", config, "proxy", "--space", "darts", "--source", "natural", "--architectures",
              str(tmp_path / "spos" / "architectures.json"), "--out", str(tmp_path / "x.json")])
    assert "not architectures of the darts space" in capsys.readouterr().err


def test_fidelity_config_errors():
    with pytest.raises(DfnasError, match=r"'fidelity.architectures': 3 architectures cannot be ranked"):
        fidelity_config(architectures=3)
    with pytest.raises(DfnasError, match=r"'fidelity.sources': 'noise' is not in synthesis.variants"):
        validate_config({"synthesis": {"variants": ["full"]}, "fidelity": {"architectures": 4,
                                                                          "sources": ["natural", "noise"]}})
