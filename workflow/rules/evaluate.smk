# Retrain and evaluate: every found architecture (and every random baseline) trained from scratch
# on natural data with one recipe, then tested on the natural test split.


rule retrain:
    input:
        arch=f"{RESULTS}/search/{{algorithm}}/{{source}}/seed{{seed}}/architecture.json",
        natural=rules.data.output[0],
    output:
        f"{RESULTS}/retrain/{{algorithm}}/{{source}}/seed{{seed}}/metrics.json",
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        source="|".join(SOURCES),
        seed=r"\d+",
    params:
        cfg=stage_config("data", "retrain"),
    log:
        f"{LOGS}/retrain/{{algorithm}}_{{source}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/retrain/{{algorithm}}_{{source}}_seed{{seed}}.tsv"
    threads: config["threads"]
    resources:
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m dfnas.retrain --config-json {params.cfg:q} --arch {input.arch} --out {output}"
        " --threads {threads} 2>&1 | tee {log}"
