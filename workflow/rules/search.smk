# Architecture search: every algorithm x data source x seed is one job; they run side by side.
# A synthetic source reads only its synthetic set and soft-label cache, never natural images.

SEARCH = f"{RESULTS}/search"
ALGORITHMS = config["search"]["algorithms"]
SOURCES = config["search"]["sources"]
SEEDS = config["search"]["seeds"]

for _source in SOURCES:
    if _source not in ("natural", "random") and _source not in VARIANTS:
        raise WorkflowError(f"config key 'search.sources': {_source!r} is not in synthesis.variants {VARIANTS}")


def search_params(wildcards):
    """What one search reads: its algorithm's keys and the shared ones, not the lists of jobs, so that
    adding a source or a seed reruns no finished search."""
    cfg = json.loads(stage_config("search", *(["data"] if wildcards.source == "natural" else [])))
    shared = {k: v for k, v in cfg["search"].items() if k not in ("algorithms", "sources", "seeds") + tuple(ALGORITHMS)}
    cfg["search"] = {**shared, wildcards.algorithm: cfg["search"][wildcards.algorithm]}
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))


def search_inputs(wildcards):
    if wildcards.source == "random":
        return {}
    if wildcards.source == "natural":
        return {"natural": rules.data.output[0]}
    return {
        "dataset": f"{SYN}/{wildcards.source}/dataset.h5",
        "labels": f"{SYN}/{wildcards.source}/soft_labels.h5",
    }


def search_data_args(wildcards, input):
    if wildcards.source in ("natural", "random"):
        return ""
    return f"--dataset {input.dataset} --labels {input.labels}"


rule search:
    input:
        unpack(search_inputs),
    output:
        arch=f"{SEARCH}/{{algorithm}}/{{source}}/seed{{seed}}/architecture.json",
        history=f"{SEARCH}/{{algorithm}}/{{source}}/seed{{seed}}/history.csv",
        figure=f"{SEARCH}/{{algorithm}}/{{source}}/seed{{seed}}/architecture.png",
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        source="|".join(SOURCES),
        seed=r"\d+",
    params:
        cfg=search_params,
        data=search_data_args,
        out_dir=lambda wc, output: os.path.dirname(output.arch),
    log:
        f"{LOGS}/search/{{algorithm}}_{{source}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/search/{{algorithm}}_{{source}}_seed{{seed}}.tsv"
    threads: config["threads"]
    resources:
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m dfnas.search --config-json {params.cfg:q} --algorithm {wildcards.algorithm}"
        " --source {wildcards.source} --seed {wildcards.seed} {params.data} --out-dir {params.out_dir}"
        " --threads {threads} 2>&1 | tee {log}"
