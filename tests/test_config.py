"""The config schema: presets validate, defaults are filled, bad keys and values are named."""

import json

import pytest
import yaml

from conftest import REPO
from dfnas.config import load_config, validate_config
from dfnas.errors import DfnasError

PRESETS = [REPO / "config.yaml", *sorted((REPO / "config").glob("*.yaml"))]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_validates(path):
    cfg = load_config(path)
    assert cfg["run"] and cfg["data"]["name"] and cfg["teacher"]["source"]


def test_defaults_are_filled_from_the_schema():
    cfg = validate_config({})
    assert cfg["run"] == "default"
    assert cfg["device"] == "auto"
    assert cfg["data"]["subset"] == {"train": None, "test": None}
    assert cfg["teacher"]["train"]["lr"] == 0.1
    assert cfg["teacher"]["arch"] == {"name": "resnet_cifar", "kwargs": {"depth": 8, "width": 16}}


def test_given_values_are_kept():
    cfg = validate_config({"teacher": {"train": {"epochs": 3}}})
    assert cfg["teacher"]["train"]["epochs"] == 3
    assert cfg["teacher"]["train"]["batch_size"] == 128


@pytest.mark.parametrize(
    "config, message",
    [
        ({"teacher": {"train": {"epohcs": 3}}}, "config key 'teacher.train.epohcs' is not a known key"),
        ({"sed": 1}, "config key 'sed' is not a known key"),
        ({"teacher": {"train": {"epochs": 0}}}, "config key 'teacher.train.epochs': 0 is less than the minimum of 1"),
        ({"teacher": {"train": {"lr": "fast"}}}, "config key 'teacher.train.lr': 'fast' is not of type 'number'"),
        ({"data": {"name": "svhn"}}, "config key 'data.name': 'svhn' is not one of fashion_mnist, mnist"),
        ({"teacher": {"source": "hub:resnet"}}, "config key 'teacher.source': 'hub:resnet' is not a valid value"),
        ({"teacher": {"sha256": "abc"}}, "config key 'teacher.sha256'"),
        ({"device": "gpu"}, "config key 'device': 'gpu' is not a valid value"),
        ({"data": {"subset": {"train": -5}}}, "config key 'data.subset.train': -5 is less than the minimum of 1"),
        ({"run": ".."}, "config key 'run': '..' is not a valid value (outputs go to results/<run>/)"),
        ({"seed": 2**64}, "config key 'seed': 18446744073709551616 is greater than the maximum of 4294967295"),
        ({"search": {"seeds": [0, 2**32]}}, "config key 'search.seeds.1': 4294967296 is greater than the maximum"),
        ({"soft_labels": {"scale": [1.0, 0.35]}},
         "config key 'soft_labels.scale': [1.0, 0.35] is a [min, max] range; the first is the larger"),
        ({"data": {"crop_scale": [0.5, 0.2]}}, "config key 'data.crop_scale': [0.5, 0.2] is a [min, max] range"),
        ({"search": {"spos": {"train_flops": [4e6, 1e6]}}}, "config key 'search.spos.train_flops': [4000000.0, "),
        ({"search": {"spos": {"stage_blocks": [1, 2, 3], "widths": [8, 16]}}},
         "config key 'search.spos.widths': 2 widths for 3 stages (search.spos.stage_blocks); give one per stage"),
        ({"search": {"proxyless": {"strides": [1]}}},
         "config key 'search.proxyless.stage_blocks': stage_blocks, widths and strides list one value per stage, "
         "but hold 6, 6 and 1"),
        ({"search": {"darts": {"steps": 2, "multiplier": 9}}},
         "config key 'search.darts.multiplier': a cell concatenates its last 9 nodes but has 2 (search.darts.steps)"),
        ({"search": {"darts": {"epochs": 5, "arch_warmup_epochs": 5}}},
         "config key 'search.darts.arch_warmup_epochs': 5 warm-up epochs of 5 (search.darts.epochs) leave the "
         "architecture no step; lower it"),
    ],
)
def test_bad_config_names_the_key(config, message):
    with pytest.raises(DfnasError) as err:
        validate_config(config)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_is_one_line_with_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(DfnasError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config(bad)


def test_a_key_given_twice_is_one_line_with_its_line(tmp_path):
    """In one mapping a repeated key is an error (PyYAML would keep the last); a key overriding a
    merged anchor ('<<') is not a repeat."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("seed: 1\nsearch:\n  darts:\n    lr: 0.1\n    epochs: 2\n    lr: 0.2\n")
    with pytest.raises(DfnasError) as err:
        load_config(twice)
    assert str(err.value) == f"config file {twice} line 6: not valid YAML (key 'lr' given twice)"
    merged = tmp_path / "merged.yaml"
    merged.write_text("retrain: &r {epochs: 2, lr: 0.1}\nteacher:\n  train:\n    <<: *r\n    lr: 0.3\n")
    assert load_config(merged)["teacher"]["train"]["lr"] == 0.3
    # The same key in two different mappings is no repeat.
    both = tmp_path / "both.yaml"
    both.write_text("teacher:\n  train: {lr: 0.1}\nretrain: {lr: 0.2}\n")
    loaded = load_config(both)
    assert (loaded["teacher"]["train"]["lr"], loaded["retrain"]["lr"]) == (0.1, 0.2)


def test_a_config_that_is_not_a_mapping_is_one_line(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(DfnasError, match=r"^config file .*list.yaml: holds a list, not a mapping of config keys$"):
        load_config(listed)
    for text, kind in (("[1]", "list"), ("null", "NoneType"), ('"seed"', "str")):
        with pytest.raises(DfnasError, match=rf"^--config-json: holds a {kind}, not a JSON object of config keys$"):
            load_config(json_text=text)


def test_json_string_overrides_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"seed": 3, "data": {"name": "mnist"}}))
    cfg = load_config(path, '{"data": {"name": "cifar10"}}')
    assert cfg["seed"] == 3 and cfg["data"]["name"] == "cifar10"



def test_text_values_from_snakemake_config_are_read_as_yaml():
    """`--config 'synthesis={shards: 1}'` reaches the Snakefile as {'shards': '1'} (Snakemake keeps
    nested values as text): numbers, booleans, nulls and lists of numbers are read, strings stay."""
    cfg = validate_config({"synthesis": {"shards": "3", "lr": "0.05", "variants": ["full"]},
                           "search": {"seeds": ["0", "2"], "sources": ["natural"]},
                           "data": {"download": "false", "subset": {"train": "null"}}, "run": "42"})
    assert cfg["synthesis"]["shards"] == 3 and cfg["synthesis"]["lr"] == 0.05
    assert cfg["search"]["seeds"] == [0, 2] and cfg["data"]["download"] is False
    assert cfg["data"]["subset"]["train"] is None
    assert cfg["run"] == "42"  # a string key keeps its text
    with pytest.raises(DfnasError, match="config key 'synthesis.shards': 'two' is not of type 'integer'"):
        validate_config({"synthesis": {"shards": "two"}})


def test_numbers_in_exponent_notation(tmp_path):
    """`lr: 1e-4` is a number in a YAML config file, in a JSON one (as json.dumps writes 1e-05) and as
    Snakemake's text; YAML 1.1 alone would read the first two as strings."""
    path = tmp_path / "c.yaml"
    path.write_text("retrain: {lr: 1e-4, weight_decay: 5.0e-5}\nsynthesis: {lr: 1.5E-1}\nrun: 1e5x\n")
    cfg = load_config(path)
    assert cfg["retrain"]["lr"] == 1e-4 and cfg["retrain"]["weight_decay"] == 5e-5
    assert cfg["synthesis"]["lr"] == 0.15 and cfg["run"] == "1e5x"
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert load_config(tmp_path / "c.json")["synthesis"]["loss"]["l2"] == cfg["synthesis"]["loss"]["l2"] == 1e-5
    assert validate_config({"retrain": {"lr": "2e-3"}})["retrain"]["lr"] == 0.002
    # An integer key written in exponent notation is that integer, not a float that breaks range().
    steps = validate_config({"fidelity": {"steps": "1e3"}, "search": {"spos": {"iterations": 1.5e5}}})
    assert steps["fidelity"]["steps"] == 1000 and type(steps["fidelity"]["steps"]) is int
    assert type(steps["search"]["spos"]["iterations"]) is int
    with pytest.raises(DfnasError, match="config key 'fidelity.steps': 2.5 is not of type 'integer'"):
        validate_config({"fidelity": {"steps": 2.5}})


@pytest.mark.parametrize("config, message", [
    ({"synthesis": {"shards": 5, "images_per_round": 2}},
     "config key 'synthesis.images_per_round': 2 images a round cannot fill 5 shards"),
    ({"search": {"temperature": float("nan")}}, "config key 'search.temperature': not a finite number"),
    ({"retrain": {"lr": float("inf")}}, "config key 'retrain.lr': not a finite number"),
    ({"search": {"algorithms": []}}, "config key 'search.algorithms': [] should be non-empty"),
    ({"fidelity": {"sources": []}}, "config key 'fidelity.sources': [] should be non-empty"),
])
def test_configs_that_would_break_later_are_refused(config, message):
    with pytest.raises(DfnasError) as err:
        validate_config(config)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_nan_from_yaml_and_non_utf8_files_are_one_line(tmp_path):
    nan = tmp_path / "nan.yaml"
    nan.write_text("search:\n  temperature: .nan\n")
    with pytest.raises(DfnasError, match=r"^config key 'search.temperature': not a finite number"):
        load_config(nan)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DfnasError, match=r"latin.yaml: not UTF-8 text \(byte 0xe9 at position 8\)"):
        load_config(latin)
