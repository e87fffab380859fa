# Fidelity: is each source a faithful proxy for NAS, apart from any single search's luck? Per search
# space (named like its algorithm), K architectures drawn with the run's seed are trained briefly on
# every source (natural data, each synthetic variant by distillation) and with the retrain recipe on
# natural data (their true accuracy); the report ranks one against the other.


rule fidelity_draw:
    input:
        natural=rules.data.output[0],
    output:
        archs=L.fidelity_architectures("{algorithm}"),
        each=[
            L.fidelity_architecture("{algorithm}", k)
            for k in range(config["fidelity"]["architectures"])
        ],
    log:
        L.log("fidelity/{algorithm}_draw"),
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
    conda:
        ENV
    threads: 1
    params:
        cfg=job_params("fidelity_draw"),
        out_dir=lambda wc, output: os.path.dirname(output.archs),
    shell:
        "python -m dfnas.fidelity --config-json {params.cfg:q} --threads {threads} draw --space {wildcards.algorithm}"
        " --dataset-json {input.natural} --out-dir {params.out_dir} 2>&1 | tee {log}"


rule fidelity_proxy:
    input:
        unpack(search_inputs),
        archs=L.fidelity_architectures("{algorithm}"),
    output:
        L.fidelity_proxy("{algorithm}", "{source}"),
    log:
        L.log("fidelity/{algorithm}_{source}"),
    benchmark:
        L.benchmark("fidelity/{algorithm}_{source}")
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        source="|".join(FIDELITY_SOURCES),
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=job_params("fidelity_proxy"),
        data=search_data_args,
    shell:
        "python -m dfnas.fidelity --config-json {params.cfg:q} --threads {threads} proxy --space {wildcards.algorithm}"
        " --source {wildcards.source} --architectures {input.archs} {params.data} --out {output} 2>&1 | tee {log}"


# The truth: each architecture retrained with the recipe of every found architecture,
# `fidelity.truth_repeats` times with their own seeds (the report takes the mean).
rule fidelity_truth:
    input:
        arch=L.fidelity_architecture("{algorithm}", "{index}"),
        natural=rules.data.output[0],
    output:
        L.fidelity_truth("{algorithm}", "{index}", "{repeat}"),
    log:
        L.log("fidelity/{algorithm}_retrain{index}_repeat{repeat}"),
    benchmark:
        L.benchmark("fidelity/{algorithm}_retrain{index}_repeat{repeat}")
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        index=r"\d+",
        repeat=r"\d+",
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=RETRAIN_GPUS,
    params:
        cfg=job_params("retrain"),
        python=RETRAIN_PYTHON,
    shell:
        "{params.python} -m dfnas.retrain --config-json {params.cfg:q} --arch {input.arch} --out {output}"
        " --repeat {wildcards.repeat} --threads {threads} 2>&1 | tee {log}"
