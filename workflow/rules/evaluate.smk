# Retrain and evaluate: every found architecture (and every random baseline) trained from scratch
# on natural data with one recipe, then tested on the natural test split.


rule retrain:
    input:
        arch=L.architecture("{algorithm}", "{source}", "{seed}"),
        natural=rules.data.output[0],
    output:
        L.metrics("{algorithm}", "{source}", "{seed}"),
    log:
        L.log("retrain/{algorithm}_{source}_seed{seed}"),
    benchmark:
        L.benchmark("retrain/{algorithm}_{source}_seed{seed}")
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        source="|".join(SOURCES),
        seed=r"\d+",
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=job_params("retrain"),
    shell:
        "python -m dfnas.retrain --config-json {params.cfg:q} --arch {input.arch} --out {output}"
        " --threads {threads} 2>&1 | tee {log}"
