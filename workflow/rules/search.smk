# Architecture search: every algorithm x data source x seed is one job; they run side by side.
# A synthetic source reads only its synthetic set and soft-label cache, never natural images.

from types import SimpleNamespace

SEARCH = f"{RESULTS}/search"
ALGORITHMS = config["search"]["algorithms"]
SOURCES = config["search"]["sources"]
SEEDS = config["search"]["seeds"]

for _source in SOURCES:
    if _source not in ("natural", "random") and _source not in VARIANTS:
        raise WorkflowError(f"config key 'search.sources': {_source!r} is not in synthesis.variants {VARIANTS}")


# The keys that define a space (and its FLOPs bound): all that a random baseline reads.
RANDOM_KEYS = {
    "darts": ("steps", "multiplier"),
    "spos": ("stem", "stem_stride", "stage_blocks", "widths", "last_conv", "flops_bound"),
    "proxyless": ("stem", "stem_stride", "first", "stage_blocks", "widths", "strides", "feature_mix"),
}


def search_params(wildcards):
    """What one search reads: its algorithm's keys and the shared ones, not the lists of jobs, so that
    adding a source or a seed reruns no finished search, and a random baseline only the keys of its
    space (and the dataset's name, which fixes the input shape)."""
    cfg = json.loads(stage_config("search", "data"))
    own = {k: v for k, v in cfg["search"][wildcards.algorithm].items() if k != "ranking"}  # read by rule ranking
    if wildcards.source == "random":
        cfg["search"] = {wildcards.algorithm: {k: v for k, v in own.items() if k in RANDOM_KEYS[wildcards.algorithm]}}
        cfg["data"] = {"name": cfg["data"]["name"]}
    else:
        shared = {k: v for k, v in cfg["search"].items() if k not in ("algorithms", "sources", "seeds") + tuple(ALGORITHMS)}
        cfg["search"] = {**shared, wildcards.algorithm: own}
        if wildcards.source != "natural":
            del cfg["data"]
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))


def search_inputs(wildcards):
    if wildcards.source == "natural":
        return {"natural": rules.data.output[0]}
    return {
        "dataset": f"{SYN}/{wildcards.source}/dataset.h5",
        "labels": f"{SYN}/{wildcards.source}/soft_labels.h5",
    }


def search_data_args(wildcards, input):
    if wildcards.source == "natural":
        return ""
    return f"--dataset {input.dataset} --labels {input.labels}"


rule search:
    input:
        unpack(search_inputs),
    output:
        arch=f"{SEARCH}/{{algorithm}}/{{source}}/seed{{seed}}/architecture.json",
        history=f"{SEARCH}/{{algorithm}}/{{source}}/seed{{seed}}/history.csv",
        figure=f"{SEARCH}/{{algorithm}}/{{source}}/seed{{seed}}/architecture.png",
        network=f"{SEARCH}/{{algorithm}}/{{source}}/seed{{seed}}/search_network.pt",
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        source="|".join(s for s in SOURCES if s != "random"),
        seed=r"\d+",
    params:
        cfg=search_params,
        data=search_data_args,
        out_dir=lambda wc, output: os.path.dirname(output.arch),
    log:
        f"{LOGS}/search/{{algorithm}}_{{source}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/search/{{algorithm}}_{{source}}_seed{{seed}}.tsv"
    priority: 20
    threads: config["threads"]
    resources:
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m dfnas.search --config-json {params.cfg:q} --algorithm {wildcards.algorithm}"
        " --source {wildcards.source} --seed {wildcards.seed} {params.data} --out-dir {params.out_dir}"
        " --threads {threads} 2>&1 | tee {log}"


# The random baseline: an architecture drawn from the space with the seed (SPOS: under the FLOPs
# bound). It reads no data; it is a job of its own so that it has no search network to write.
rule random_architecture:
    output:
        arch=f"{SEARCH}/{{algorithm}}/random/seed{{seed}}/architecture.json",
        history=f"{SEARCH}/{{algorithm}}/random/seed{{seed}}/history.csv",
        figure=f"{SEARCH}/{{algorithm}}/random/seed{{seed}}/architecture.png",
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        seed=r"\d+",
    params:
        cfg=lambda wc: search_params(SimpleNamespace(algorithm=wc.algorithm, source="random")),
        out_dir=lambda wc, output: os.path.dirname(output.arch),
    log:
        f"{LOGS}/search/{{algorithm}}_random_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/random_architecture/{{algorithm}}_seed{{seed}}.tsv"
    threads: 1
    conda:
        ENV
    shell:
        "python -m dfnas.search --config-json {params.cfg:q} --algorithm {wildcards.algorithm}"
        " --source random --seed {wildcards.seed} --out-dir {params.out_dir} --threads {threads} 2>&1 | tee {log}"


# How faithfully a synthetic variant ranks SPOS paths: the supernet searched on it scores fixed
# paths on synthetic and on natural validation data (Kendall tau). An evaluation, like retrain: it
# reads natural data, which the synthetic search itself never does.
RANKED = [s for s in SOURCES if s in VARIANTS] if "spos" in ALGORITHMS and config["search"]["spos"]["ranking"]["paths"] else []


def ranking_params(wildcards):
    """The data, the SPOS keys and the distillation temperature: what the ranking check reads."""
    cfg = json.loads(stage_config("data", "search"))
    cfg["search"] = {"algorithms": ["spos"], "temperature": cfg["search"]["temperature"], "spos": cfg["search"]["spos"]}
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))


rule ranking:
    input:
        network=f"{SEARCH}/spos/{{source}}/seed{{seed}}/search_network.pt",
        dataset=f"{SYN}/{{source}}/dataset.h5",
        labels=f"{SYN}/{{source}}/soft_labels.h5",
        natural=rules.data.output[0],
    output:
        json=f"{SEARCH}/spos/{{source}}/seed{{seed}}/ranking.json",
        csv=f"{SEARCH}/spos/{{source}}/seed{{seed}}/ranking.csv",
        figure=report(f"{SEARCH}/spos/{{source}}/seed{{seed}}/ranking.png", caption="../report/ranking.rst",
                      category="3. Search", labels=lambda wc: {"source": wc.source, "seed": wc.seed}),
    wildcard_constraints:
        source="|".join(VARIANTS),
        seed=r"\d+",
    params:
        cfg=ranking_params,
        out_dir=lambda wc, output: os.path.dirname(output.json),
    log:
        f"{LOGS}/search/spos_{{source}}_seed{{seed}}_ranking.log",
    benchmark:
        f"{BENCH}/ranking/spos_{{source}}_seed{{seed}}.tsv"
    threads: config["threads"]
    resources:
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m dfnas.ranking --config-json {params.cfg:q} --network {input.network} --dataset {input.dataset}"
        " --labels {input.labels} --out-dir {params.out_dir} --threads {threads} 2>&1 | tee {log}"
