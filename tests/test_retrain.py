"""Retraining found architectures: the space registry, the random baseline, the metrics file, and
training that resumes after a kill."""

import copy
import json
import subprocess
import sys

import pytest

from conftest import REPO, assert_resumes_after_a_kill, dataset_json, quiet
from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.flops import count_macs, count_parameters
from dfnas.retrain import retrain
from dfnas.runtime import derived_seed
from dfnas.search import run_search
from dfnas.spaces import build_architecture, get_space
from dfnas.spaces.darts import DARTS_V2, PRIMITIVES, genotype_to_dict, random_choices


def test_random_darts_choices_are_uniform_valid_and_seeded():
    a, b, c = random_choices(0), random_choices(0), random_choices(1)
    assert a == b and a != c
    for choices in (a, c):
        for kind in ("normal", "reduce"):
            edges = choices[kind]
            assert len(edges) == 8
            for node in range(4):
                (op1, i1), (op2, i2) = edges[2 * node], edges[2 * node + 1]
                assert i1 != i2 and 0 <= i1 < node + 2 and 0 <= i2 < node + 2
                assert op1 in PRIMITIVES and op1 != "none" and op2 != "none"
    # Uniform over the 7 operations: over many draws each appears about 1/7 of the time.
    ops = [op for s in range(200) for op, _ in random_choices(s)["normal"]]
    counts = {p: ops.count(p) / len(ops) for p in PRIMITIVES if p != "none"}
    assert all(abs(v - 1 / 7) < 0.03 for v in counts.values())


def test_registry_builds_an_architecture_json():
    arch = {"space": "darts", "space_args": {"steps": 4, "multiplier": 4}, "choices": genotype_to_dict(DARTS_V2)}
    net = build_architecture(arch, 3, 32, 10, {"cells": 20, "channels": 36, "auxiliary": True})
    assert count_parameters(net, exclude=get_space("darts").aux_name) == 3_349_342
    with pytest.raises(DfnasError, match="unknown search space 'nasnet'"):
        build_architecture({"space": "nasnet", "choices": {}}, 3, 32, 10, {})
    with pytest.raises(DfnasError, match="unknown operation 'conv_9x9'"):
        bad = copy.deepcopy(arch)
        bad["choices"]["normal"][0] = ["conv_9x9", 0]
        build_architecture(bad, 3, 32, 10, {"cells": 5, "channels": 8})


@pytest.fixture
def retrain_config(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["retrain"] = {"train_images": 100, "epochs": 2, "batch_size": 25, "cutout": 4, "drop_path": 0.2,
                      "aux_weight": 0.4, "darts": {"cells": 3, "channels": 4}}
    cfg["search"] = {"darts": {"cells": 3, "channels": 4}}
    return validate_config(cfg)


def test_random_baseline_then_retrain(retrain_config, tmp_path):
    arch = run_search(retrain_config, "darts", "random", 7, tmp_path / "search", log=quiet,
                     dataset_json=dataset_json(retrain_config, tmp_path))
    assert arch["found_by"]["source"] == "random" and arch["choices"] == random_choices(7)
    out = tmp_path / "metrics.json"
    metrics = retrain(retrain_config, tmp_path / "search" / "architecture.json", out, log=quiet)
    net = build_architecture(arch, 1, 28, 10, {"cells": 3, "channels": 4, "auxiliary": True})
    assert metrics["parameters"] == count_parameters(net, exclude="aux_head")
    assert metrics["multiply_adds"] == count_macs(net, (1, 28, 28))
    assert metrics["train_images"] == 100 and metrics["test_images"] == 100
    assert 0 <= metrics["top1"] <= 1 and metrics["top1"] <= metrics["top5"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["recipe"]["drop_path"] == 0.2 and metrics["sizes"]["auxiliary"] is True
    assert metrics["found_by"]["seed"] == 7
    assert not out.with_name("metrics.json.ckpt").exists()


def test_a_space_sets_its_own_epochs(retrain_config, tmp_path):
    """``retrain.<space>.epochs`` overrides the shared epochs for that space only; it is part of the
    recipe (metrics, retrain job config), never a network size, and not in the jobs that only size
    networks (a fidelity proxy does not rerun when the retrain length changes)."""
    from dfnas.jobs import job_config
    run_search(retrain_config, "darts", "random", 7, tmp_path / "search", log=quiet,
               dataset_json=dataset_json(retrain_config, tmp_path))
    cfg = validate_config({**copy.deepcopy(retrain_config), "retrain": {
        **retrain_config["retrain"], "epochs": 3, "darts": {"cells": 3, "channels": 4, "epochs": 1}}})
    metrics = retrain(cfg, tmp_path / "search" / "architecture.json", tmp_path / "m.json", log=quiet)
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert metrics["recipe"]["epochs"] == 1 and "epochs" not in metrics["sizes"]
    assert job_config(cfg, "retrain", "spos")["retrain"]["epochs"] == 3
    darts_job = job_config(cfg, "retrain", "darts")["retrain"]  # resolved: the shared 3 is not in it
    assert darts_job["epochs"] == 1 and darts_job["darts"] == {"cells": 3, "channels": 4, "no_decay": "none"}
    assert retrain(validate_config({**copy.deepcopy(cfg), "retrain": darts_job}), tmp_path / "search" / "architecture.json",
                   tmp_path / "m2.json", log=quiet)["recipe"]["epochs"] == 1
    assert job_config(cfg, "fidelity_proxy", "darts", "full")["retrain"] == {"darts": {"cells": 3, "channels": 4}}


def test_each_space_retrains_with_its_protocols_weight_decay_and_schedule(retrain_config, tmp_path, monkeypatch):
    """DARTS decays every parameter, ProxylessNAS exempts BatchNorm, SPOS every 1-d tensor
    (``retrain.<space>.no_decay``), and SPOS decays its learning rate linearly
    (``retrain.<space>.schedule``); the retrain's optimizer and schedule follow its space's choices,
    which the metrics record."""
    from dfnas import train
    from dfnas.spaces import retrain_recipe

    defaults = validate_config({})["retrain"]
    assert {s: retrain_recipe(defaults, s)["no_decay"] for s in ("darts", "proxyless", "spos")} == \
        {"darts": "none", "proxyless": "norm", "spos": "norm_and_bias"}
    # Their learning-rate decay likewise: SPOS's is linear.
    assert {s: retrain_recipe(defaults, s)["schedule"] for s in ("darts", "proxyless", "spos")} == \
        {"darts": "cosine", "proxyless": "cosine", "spos": "linear"}
    asked, schedules = [], set()
    real = train.decay_groups
    monkeypatch.setattr(train, "decay_groups", lambda model, wd, no_decay: asked.append(no_decay) or real(model, wd, no_decay))
    real_lr = train.scheduled_lr
    monkeypatch.setattr(train, "scheduled_lr", lambda kind, *a: schedules.add(kind) or real_lr(kind, *a))
    run_search(retrain_config, "darts", "random", 7, tmp_path / "search", log=quiet,
               dataset_json=dataset_json(retrain_config, tmp_path))
    cfg = validate_config({**copy.deepcopy(retrain_config), "retrain": {
        **retrain_config["retrain"], "epochs": 1,
        "darts": {"cells": 3, "channels": 4, "no_decay": "norm", "schedule": "linear"}}})
    metrics = retrain(cfg, tmp_path / "search" / "architecture.json", tmp_path / "m.json", log=quiet)
    assert asked == ["norm"] and metrics["recipe"]["no_decay"] == "norm" and "no_decay" not in metrics["sizes"]
    assert schedules == {"linear"} and metrics["recipe"]["schedule"] == "linear" and "schedule" not in metrics["sizes"]


def test_a_retrain_subset_smaller_than_the_class_count_is_one_line(retrain_config, tmp_path):
    run_search(retrain_config, "darts", "random", 7, tmp_path / "search", log=quiet,
               dataset_json=dataset_json(retrain_config, tmp_path))
    cfg = validate_config({**copy.deepcopy(retrain_config), "retrain": {**retrain_config["retrain"], "train_images": 9}})
    with pytest.raises(DfnasError) as err:
        retrain(cfg, tmp_path / "search" / "architecture.json", tmp_path / "m.json", log=quiet)
    assert str(err.value) == ("config key 'retrain.train_images': 9 images cannot hold one of each of the 10 classes; "
                              "give at least 10")
    assert not (tmp_path / "m.json").exists()


def test_same_recipe_seed_for_every_arm_of_a_search_seed(retrain_config, tmp_path):
    seeds = []
    for source in ("random", "random"):
        arch = run_search(retrain_config, "darts", source, 3, tmp_path / source, log=quiet,
                         dataset_json=dataset_json(retrain_config, tmp_path))
        arch["found_by"]["source"] = "full"  # another arm, same search seed
        (tmp_path / "a.json").write_text(json.dumps(arch))
        seeds.append(retrain(validate_config({**copy.deepcopy(retrain_config),
                                              "retrain": {**retrain_config["retrain"], "epochs": 1}}),
                             tmp_path / "a.json", tmp_path / "m.json", log=quiet)["seed"])
    assert seeds[0] == seeds[1]


def test_a_repeat_retrains_with_its_own_seed(retrain_config, tmp_path):
    """`--repeat r` (the fidelity truth's further retrains): repeat 0 is the architecture's own seed,
    each further repeat another one, recorded; a negative repeat is refused in one line."""
    run_search(retrain_config, "darts", "random", 3, tmp_path / "search", log=quiet,
               dataset_json=dataset_json(retrain_config, tmp_path))
    cfg = validate_config({**copy.deepcopy(retrain_config), "retrain": {**retrain_config["retrain"], "epochs": 1}})
    arch = tmp_path / "search" / "architecture.json"
    runs = [retrain(cfg, arch, tmp_path / f"m{r}.json", log=quiet, repeat=r) for r in (0, 1, 2)]
    search_seed = json.loads(arch.read_text())["found_by"]["seed"]
    assert runs[0]["seed"] == derived_seed(cfg["seed"], "retrain", search_seed) % (2**31)
    assert len({m["seed"] for m in runs}) == 3 and [m["repeat"] for m in runs] == [0, 1, 2]
    refused = subprocess.run([sys.executable, "-m", "dfnas.retrain", "--config", "config.yaml", "--arch", str(arch),
                              "--out", str(tmp_path / "x.json"), "--repeat", "-1"], capture_output=True, text=True,
                             cwd=REPO)
    assert refused.returncode != 0 and "--repeat: -1 is negative" in refused.stderr


def test_bad_architecture_files(retrain_config, tmp_path):
    with pytest.raises(DfnasError, match="does not exist"):
        retrain(retrain_config, tmp_path / "none.json", tmp_path / "m.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"space\": \"darts\"}")
    with pytest.raises(DfnasError, match="not an architecture JSON"):
        retrain(retrain_config, bad, tmp_path / "m.json")
    bad.write_text("{not json")
    with pytest.raises(DfnasError, match="not valid JSON"):
        retrain(retrain_config, bad, tmp_path / "m.json")


def test_drop_path_grows_linearly_over_the_epochs(retrain_config, tmp_path):
    from dfnas.data import dataset_from_config
    from dfnas.train import Recipe, train_classifier

    arch = {"space": "darts", "choices": random_choices(0)}
    net = build_architecture(arch, 1, 28, 10, {"cells": 3, "channels": 4, "auxiliary": True})
    data = dataset_from_config(retrain_config)
    seen = []
    train_classifier(net, data.train, Recipe(
        epochs=4, batch_size=100, drop_path=0.2, aux_weight=0.4, crop_padding=0), "cpu", 0, [0.286], [0.353],
        log=lambda m: seen.append(net.drop_path_prob))
    assert seen == pytest.approx([0.0, 0.05, 0.1, 0.15])


def test_killed_retraining_resumes_with_the_same_result(retrain_config, tmp_path):
    run_search(retrain_config, "darts", "random", 2, tmp_path / "search", log=quiet,
                     dataset_json=dataset_json(retrain_config, tmp_path))

    def run(out_dir, log):
        out = out_dir / "metrics.json"
        metrics = retrain(retrain_config, tmp_path / "search" / "architecture.json", out, log=log)
        assert not out.with_name("metrics.json.ckpt").exists()  # removed once the training is done
        scores = {k: metrics[k] for k in ("top1", "top5", "parameters", "multiply_adds", "seed")}
        return scores, [{k: v for k, v in row.items() if k != "seconds"} for row in metrics["history"]]

    assert_resumes_after_a_kill(run, tmp_path)
