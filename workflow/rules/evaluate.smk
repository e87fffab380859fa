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
        gpu=RETRAIN_GPUS,
    params:
        cfg=job_params("retrain"),
        python=RETRAIN_PYTHON,
    shell:
        "{params.python} -m dfnas.retrain --config-json {params.cfg:q} --arch {input.arch} --out {output}"
        " --threads {threads} 2>&1 | tee {log}"


# The data-free student: each architecture searched on student.variant, trained by distillation on
# that variant alone (no natural training image), exported with torch.export. The natural test split
# only scores it, and only with student.natural_test.
rule student:
    input:
        arch=L.architecture("{algorithm}", "{variant}", "{seed}"),
        dataset=L.dataset("{variant}"),
        labels=L.soft_labels("{variant}"),
        natural=rules.data.output[0] if config["student"]["natural_test"] else [],
    output:
        metrics=L.student("{algorithm}", "{variant}", "{seed}"),
        weights=L.student("{algorithm}", "{variant}", "{seed}", "student.pt"),
        program=L.student("{algorithm}", "{variant}", "{seed}", "student.pt2"),
    log:
        L.log("student/{algorithm}_{variant}_seed{seed}"),
    benchmark:
        L.benchmark("student/{algorithm}_{variant}_seed{seed}")
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        variant="|".join(VARIANTS),
        seed=r"\d+",
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=lambda wc: job_json(
            config, "student", algorithm=wc.algorithm, source=wc.variant
        ),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "python -m dfnas.student --config-json {params.cfg:q} --arch {input.arch} --dataset {input.dataset}"
        " --labels {input.labels} --out-dir {params.out_dir} --threads {threads} 2>&1 | tee {log}"
