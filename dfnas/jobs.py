"""What each job of the workflow reads from the config.

A rule hands its module only the keys the job depends on (as ``--config-json``), so that Snakemake
reruns a job when, and only when, one of them changes: adding a variant, a seed, an algorithm or a
source to a finished run reruns none of its finished jobs, and a changed search key reruns only
that algorithm's searches (not its random baseline, which reads only the keys of its space).
"""

from __future__ import annotations

import json

from dfnas.layout import NATURAL, RANDOM
from dfnas.spaces import get_space, retrain_sizes, space_names
from dfnas.strategies import get_strategy, strategy_names
from dfnas.synthesis import shard_keys

SHARED = ("seed", "device", "threads")
# The jobs whose arithmetic follows config key ``precision`` (the others run no training).
PRECISION_JOBS = ("teacher", "synthesize", "search", "retrain", "fidelity_proxy", "fidelity_truth")
# Keys of ``data`` that say how batches are read, not what the data is.
READING_KEYS = ("workers", "eval_batch_size")
# Keys of ``search`` that only list jobs, or are read by other jobs than the searches.
JOB_LISTS = ("algorithms", "sources", "seeds", "supernet_test")
# Keys whose default leaves a job as it was before the key existed: left out of a job's config at
# that value, so that a finished run does not rerun its jobs for them (``retrain.<space>.epochs``:
# null too).
NEUTRAL = {("synthesis", "stack"): 1, ("retrain", "gpus"): 1, ("search", "spos", "gpus"): 1,
           ("search", "darts", "gpus"): 1, ("search", "proxyless", "gpus"): 1,
           ("search", "darts", "compile"): False, ("search", "proxyless", "eval_updates"): None,
           ("retrain", "spos", "no_decay"): "norm_and_bias", ("retrain", "color_jitter"): [0, 0, 0],
           ("retrain", "darts", "schedule"): "cosine", ("retrain", "proxyless", "schedule"): "cosine",
           ("fidelity", "bounded"): True}


def without_neutral(config: dict) -> dict:
    """``config`` without the `NEUTRAL` keys at their neutral value (a copy where any is dropped)."""
    out = json.loads(json.dumps(config))
    for path, value in NEUTRAL.items():
        section = out
        for key in path[:-1]:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict) and path[-1] in section and section[path[-1]] == value \
                and type(section[path[-1]]) is type(value):
            del section[path[-1]]
    for space in space_names():
        own = out.get("retrain", {}).get(space)
        if isinstance(own, dict) and own.get("epochs", 0) is None:
            del own["epochs"]
    return out


def job_config(cfg: dict, job: str, algorithm: str | None = None, source: str | None = None) -> dict:
    """The part of the validated config that job ``job`` reads (``algorithm`` and ``source`` for
    search, random_architecture and retrain; the fidelity jobs name their space as ``algorithm``:
    every algorithm searches a space of its own name)."""
    out = {k: cfg[k] for k in SHARED}
    if job in PRECISION_JOBS:
        out["precision"] = cfg["precision"]
    if job == "data":
        # How batches are read changes no file the data stage writes.
        out["data"] = {k: v for k, v in cfg["data"].items() if k not in READING_KEYS}
    elif job in ("teacher", "teacher_eval"):
        out.update(data=cfg["data"], teacher=cfg["teacher"])
    elif job == "synthesize":
        out["synthesis"] = shard_keys(cfg)
    elif job == "merge":
        out["synthesis"] = {"val_per_class": cfg["synthesis"]["val_per_class"]}
    elif job == "soft_labels":
        out["soft_labels"] = cfg["soft_labels"]
    elif job in ("natural_reference", "synthesis_quality"):
        out.update(data=cfg["data"], quality=cfg["quality"])
    elif job == "search":
        out.update(search_keys(cfg, algorithm, source))
    elif job == "random_architecture":
        keys = get_space(get_strategy(algorithm).space).config_keys
        out["search"] = {algorithm: {k: v for k, v in cfg["search"][algorithm].items() if k in keys}}
        # The input shape and the classes come from the data stage's dataset.json, an input.
    elif job == "ranking":
        out["data"] = cfg["data"]
        out["search"] = {"algorithms": ["spos"], "temperature": cfg["search"]["temperature"],
                         "spos": cfg["search"]["spos"]}
    elif job == "supernet_test":
        out["data"] = cfg["data"]
        # The search's own keys (its recalibration batches) and the stage's.
        out["search"] = {**search_keys(cfg, algorithm, source)["search"],
                         "supernet_test": cfg["search"]["supernet_test"]}
    elif job == "retrain":
        space = get_strategy(algorithm).space
        others = set(space_names()) - {space}
        out["data"] = cfg["data"]
        out["retrain"] = {k: v for k, v in cfg["retrain"].items() if k not in others}
        # The space's own epochs, resolved: the job then does not rerun when the shared value changes.
        own = dict(out["retrain"].get(space, {}))
        if own.get("epochs") is not None:
            out["retrain"]["epochs"] = own.pop("epochs")
            out["retrain"][space] = own
    elif job == "fidelity_draw":
        keys = get_space(algorithm).config_keys
        out["search"] = {algorithm: {k: v for k, v in cfg["search"][algorithm].items() if k in keys}}
        out["fidelity"] = {k: cfg["fidelity"][k] for k in ("architectures", "candidates", "bounded")}
        out["retrain"] = {algorithm: retrain_sizes(cfg["retrain"], algorithm)}
    elif job == "fidelity_proxy":
        out["fidelity"] = {k: v for k, v in cfg["fidelity"].items()
                           if k not in ("architectures", "candidates", "bounded", "sources", "algorithms", "score",
                                        "truth_repeats")}
        out["search"] = {k: v for k, v in cfg["search"].items() if k not in JOB_LISTS and k not in strategy_names()}
        out["retrain"] = {algorithm: retrain_sizes(cfg["retrain"], algorithm)}
        if source == NATURAL:
            out["data"] = cfg["data"]
    elif job == "student":
        space = get_strategy(algorithm).space
        out["student"] = {k: v for k, v in cfg["student"].items() if k != "variant"}
        out["student"]["variant"] = source
        out["search"] = {k: cfg["search"][k] for k in ("temperature", "t_squared")}
        out["retrain"] = {space: retrain_sizes(cfg["retrain"], space)}
        if cfg["student"]["natural_test"]:
            out["data"] = cfg["data"]
    elif job == "report":
        out.update(run=cfg["run"], search=cfg["search"], synthesis=cfg["synthesis"], fidelity=cfg["fidelity"],
                   student={"variant": cfg["student"]["variant"]},
                   report=cfg["report"])
    else:
        raise ValueError(f"unknown job {job!r}")
    return without_neutral(out)


def search_keys(cfg: dict, algorithm: str, source: str) -> dict:
    """A search reads the shared search keys and its algorithm's, not the job lists nor the other
    algorithms' (nor what other rules read of its section); natural data only on the natural source."""
    strategy = get_strategy(algorithm)
    own = {k: v for k, v in cfg["search"][algorithm].items() if k not in strategy.other_rules_keys}
    if source == RANDOM:
        raise ValueError("the random baseline is the random_architecture job")
    shared = {k: v for k, v in cfg["search"].items() if k not in JOB_LISTS and k not in strategy_names()}
    out = {"search": {**shared, algorithm: own}}
    if source == NATURAL:
        out["data"] = cfg["data"]
    return out


def job_json(cfg: dict, job: str, **wildcards) -> str:
    """`job_config` as the compact JSON a rule passes with ``--config-json``."""
    return json.dumps(job_config(cfg, job, **wildcards), sort_keys=True, separators=(",", ":"))
