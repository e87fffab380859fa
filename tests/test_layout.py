"""The results layout and the config keys of each job: what the rules and the report share."""

import json

import pytest

from conftest import REPO
from dfnas.config import load_config, validate_config
from dfnas.errors import DfnasError
from dfnas.jobs import job_config, job_json
from dfnas.layout import Layout, arms, ordered_sources, ranked
from dfnas.spaces import get_space


@pytest.fixture
def smoke():
    return load_config(REPO / "config" / "smoke.yaml")


def test_paths_from_values_and_from_wildcards():
    layout = Layout("smoke")
    assert layout.architecture("darts", "full", 0) == "results/smoke/search/darts/full/seed0/architecture.json"
    assert layout.metrics("{algorithm}", "{source}", "{seed}") == \
        "results/smoke/retrain/{algorithm}/{source}/seed{seed}/metrics.json"
    assert layout.shard("full", 3) == "results/smoke/synthesis/full/shard_003.h5"
    assert layout.shard("{variant}", "{shard}") == "results/smoke/synthesis/{variant}/shard_{shard}.h5"
    assert layout.ranking("full", 1, "png") == "results/smoke/search/spos/full/seed1/ranking.png"
    assert layout.log("search/darts_full_seed0") == "results/smoke/logs/search/darts_full_seed0.log"
    assert Layout.of("/data/runs/results/paper/") == Layout("paper", "/data/runs/results")


def test_arms_in_report_order_and_ranked_pairs(smoke):
    smoke["search"]["seeds"] = [0, 2]
    assert ordered_sources(["random", "full", "natural", "noise"]) == ["natural", "full", "noise", "random"]
    got = arms(smoke)
    assert len(got) == 3 * 3 * 2 and got[:3] == [("darts", "natural", 0), ("darts", "natural", 2), ("darts", "full", 0)]
    assert got[-1] == ("proxyless", "random", 2)
    assert ranked(smoke) == [("full", 0), ("full", 2)]
    smoke["search"]["algorithms"] = ["darts"]
    assert ranked(smoke) == []


def test_a_search_reads_its_algorithm_and_the_shared_keys_only(smoke):
    cfg = job_config(smoke, "search", algorithm="darts", source="full")
    assert set(cfg) == {"seed", "device", "precision", "threads", "search"}  # a synthetic search reads no natural data
    assert set(cfg["search"]) == {k for k in smoke["search"] if k not in ("algorithms", "sources", "seeds", "darts",
                                                                          "spos", "proxyless", "supernet_test")} | {"darts"}
    # The supernet test reads the search's keys, its own and natural data (it scores on the test split).
    tested = job_config(smoke, "supernet_test", algorithm="darts", source="full")
    assert tested["search"] == {**cfg["search"], "supernet_test": smoke["search"]["supernet_test"]}
    assert tested["data"] == smoke["data"]
    natural = job_config(smoke, "search", algorithm="spos", source="natural")
    assert natural["data"] == smoke["data"] and "ranking" not in natural["search"]["spos"]  # read by rule ranking
    with pytest.raises(ValueError, match="random_architecture"):
        job_config(smoke, "search", algorithm="darts", source="random")


def test_a_random_baseline_reads_its_space_keys_only(smoke):
    cfg = job_config(smoke, "random_architecture", algorithm="spos")
    assert "data" not in cfg  # the input shape and classes: from the data stage's dataset.json
    assert set(cfg["search"]["spos"]) == set(get_space("spos").config_keys)
    assert "flops_bound" in cfg["search"]["spos"] and "epochs" not in cfg["search"]["spos"]


def test_merge_shards_and_retrain_read_no_job_lists(smoke):
    assert job_config(smoke, "merge")["synthesis"] == {"val_per_class": 1}
    shard = job_config(smoke, "synthesize")["synthesis"]
    assert "variants" not in shard and "val_per_class" not in shard and shard["images_per_round"] == 20
    retrain = job_config(smoke, "retrain", algorithm="spos", source="full")["retrain"]
    assert "spos" in retrain and "darts" not in retrain and "proxyless" not in retrain
    assert retrain["epochs"] == smoke["retrain"]["epochs"]


def test_only_the_truth_and_the_report_read_truth_repeats(smoke):
    """More retrains per fidelity architecture: the brief trainings and the draw are as before."""
    more = json.loads(json.dumps(smoke))
    more["fidelity"]["truth_repeats"] = 3
    for job in ("fidelity_draw", "fidelity_proxy"):
        assert job_json(smoke, job, algorithm="spos", source="full") == job_json(more, job, algorithm="spos",
                                                                                  source="full")
    assert job_config(more, "report")["fidelity"]["truth_repeats"] == 3
    more["fidelity"]["bounded"] = False  # a draw over the whole space: the draw's own key
    assert job_config(more, "fidelity_draw", algorithm="spos")["fidelity"]["bounded"] is False
    assert "bounded" not in job_config(smoke, "fidelity_draw", algorithm="spos")["fidelity"]  # neutral default
    assert "bounded" not in job_config(more, "fidelity_proxy", algorithm="spos", source="full")["fidelity"]


def test_keys_at_their_neutral_default_leave_job_configs_as_before(smoke):
    """synthesis.stack 1, retrain.gpus 1, search.spos.gpus 1, search.darts.compile false,
    search.proxyless.eval_updates null and retrain.<space>.epochs null are not in any job's config (a finished run is not rerun for keys
    that did not exist when it ran), nor in the shards' config hash; set otherwise, they are."""
    from dfnas.synthesize import synthesis_config_hash

    plain = {job: job_json(smoke, job, **kw) for job, kw in [
        ("synthesize", {}), ("retrain", {"algorithm": "darts", "source": "full"}),
        ("search", {"algorithm": "spos", "source": "full"}), ("search", {"algorithm": "darts", "source": "full"}),
        ("search", {"algorithm": "proxyless", "source": "full"})]}
    for text in plain.values():
        assert not any(f'"{key}"' in text for key in ("stack", "gpus", "compile", "eval_updates"))
        assert '"epochs":null' not in text
    # retrain.spos.no_decay at SPOS's own norm_and_bias is what SPOS retrains did before the key;
    # no colour jitter is what every retrain did.
    assert '"no_decay"' not in job_json(smoke, "retrain", algorithm="spos", source="full")
    assert '"color_jitter"' not in job_json(smoke, "retrain", algorithm="darts", source="full")
    # The cosine schedule of DARTS and ProxylessNAS is what they did before retrain.<space>.schedule.
    assert '"schedule"' not in job_json(smoke, "retrain", algorithm="darts", source="full")
    assert '"schedule"' not in job_json(smoke, "retrain", algorithm="proxyless", source="full")
    assert '"schedule":"linear"' in job_json(smoke, "retrain", algorithm="spos", source="full").replace(" ", "")
    assert '"no_decay":"none"' in job_json(smoke, "retrain", algorithm="darts", source="full").replace(" ", "")
    changed = json.loads(json.dumps(smoke))
    changed["synthesis"]["stack"] = 2
    changed["retrain"]["gpus"] = 2
    changed["search"]["spos"]["gpus"] = 2
    changed["search"]["darts"]["compile"] = True
    changed["search"]["proxyless"]["eval_updates"] = 100
    changed["retrain"]["color_jitter"] = [0.4, 0.4, 0.4]
    changed["device"] = "auto"
    assert job_config(changed, "synthesize")["synthesis"]["stack"] == 2
    assert job_config(changed, "retrain", algorithm="darts", source="full")["retrain"]["gpus"] == 2
    assert job_config(changed, "search", algorithm="spos", source="full")["search"]["spos"]["gpus"] == 2
    assert job_config(changed, "search", algorithm="darts", source="full")["search"]["darts"]["compile"] is True
    assert job_config(changed, "search", algorithm="proxyless", source="full")["search"]["proxyless"]["eval_updates"] == 100
    assert job_config(changed, "retrain", algorithm="spos", source="full")["retrain"]["color_jitter"] == [0.4, 0.4, 0.4]
    assert synthesis_config_hash(smoke, "full") != synthesis_config_hash(changed, "full")
    changed["synthesis"]["stack"] = 1
    assert synthesis_config_hash(smoke, "full") == synthesis_config_hash(changed, "full")


def test_job_configs_are_valid_configs_and_stable_json(smoke):
    for job, kw in [("data", {}), ("teacher", {}), ("synthesize", {}), ("merge", {}), ("soft_labels", {}),
                    ("synthesis_quality", {}), ("search", {"algorithm": "proxyless", "source": "natural"}),
                    ("random_architecture", {"algorithm": "darts"}), ("ranking", {}),
                    ("supernet_test", {"algorithm": "spos", "source": "full"}),
                    ("retrain", {"algorithm": "darts", "source": "random"}), ("report", {})]:
        text = job_json(smoke, job, **kw)
        validate_config(json.loads(text))  # what the module gets must pass the schema
        reordered = json.loads(json.dumps(smoke))
        reordered["search"] = dict(reversed(list(reordered["search"].items())))
        assert job_json(reordered, job, **kw) == text, job
    with pytest.raises(ValueError, match="unknown job"):
        job_config(smoke, "deploy")


def test_a_search_source_must_be_a_variant_by_hand_too():
    with pytest.raises(DfnasError, match=r"config key 'search.sources': 'no_regional' is not in synthesis.variants"):
        validate_config({"synthesis": {"variants": ["full"]}, "search": {"sources": ["natural", "no_regional"]}})
