# Data-free synthesis: shards per variant (independent jobs, one GPU each on a cluster), their
# merge into one dataset with a train/val split, and the cached soft labels the searches replay.
# None of these rules reads natural data.


wildcard_constraints:
    variant="|".join(VARIANTS),
    shard=r"\d{3}",


rule synthesize:
    input:
        teacher=rules.teacher.output.teacher,
    output:
        L.shard("{variant}", "{shard}"),
    log:
        L.log("synthesize/{variant}_{shard}"),
    benchmark:
        L.benchmark("synthesize/{variant}_{shard}")
    priority: 80
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=job_params("synthesize"),
    shell:
        "python -m dfnas.synthesize --config-json {params.cfg:q} --teacher {input.teacher}"
        " --variant {wildcards.variant} --shard {wildcards.shard} --out {output} --threads {threads} 2>&1 | tee {log}"


rule merge:
    input:
        teacher=rules.teacher.output.teacher,
        shards=[L.shard("{variant}", s) for s in SHARD_IDS],
    output:
        dataset=L.dataset("{variant}"),
        grid=report(
            L.samples("{variant}"),
            caption="../report/samples.rst",
            category="2. Synthetic data",
            labels=lambda wc: {"variant": wc.variant},
        ),
    log:
        L.log("merge/{variant}"),
    benchmark:
        L.benchmark("merge/{variant}")
    priority: 80
    conda:
        ENV
    threads: 1
    params:
        cfg=job_params("merge"),
    shell:
        "python -m dfnas.merge --config-json {params.cfg:q} --teacher {input.teacher} --variant {wildcards.variant}"
        " --shards {input.shards} --out {output.dataset} --grid {output.grid} 2>&1 | tee {log}"


rule soft_labels:
    input:
        teacher=rules.teacher.output.teacher,
        dataset=rules.merge.output.dataset,
    output:
        L.soft_labels("{variant}"),
    log:
        L.log("soft_labels/{variant}"),
    benchmark:
        L.benchmark("soft_labels/{variant}")
    priority: 80
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=job_params("soft_labels"),
    shell:
        "python -m dfnas.soft_labels --config-json {params.cfg:q} --teacher {input.teacher}"
        " --dataset {input.dataset} --out {output} --threads {threads} 2>&1 | tee {log}"


# The reference of the data-efficiency score: the quality student distilled from as many natural
# images as a variant has synthetic training images. The same for every variant, so made once
# (sized by the first variant's training split; all variants have the same size).
rule natural_reference:
    input:
        teacher=rules.teacher.output.teacher,
        dataset=L.dataset(VARIANTS[0]),
        natural=rules.data.output[0],
    output:
        L.natural_reference(),
    log:
        L.log("synthesis_quality/natural_reference"),
    benchmark:
        L.benchmark("natural_reference")
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=job_params("natural_reference"),
    shell:
        "python -m dfnas.synthesis_quality --config-json {params.cfg:q} --teacher {input.teacher}"
        " --dataset {input.dataset} --write-reference {output} --threads {threads} 2>&1 | tee {log}"


rule synthesis_quality:
    input:
        teacher=rules.teacher.output.teacher,
        dataset=rules.merge.output.dataset,
        natural=rules.data.output[0],
        reference=rules.natural_reference.output[0],
    output:
        L.quality("{variant}"),
    log:
        L.log("synthesis_quality/{variant}"),
    benchmark:
        L.benchmark("synthesis_quality/{variant}")
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=job_params("synthesis_quality"),
    shell:
        "python -m dfnas.synthesis_quality --config-json {params.cfg:q} --teacher {input.teacher}"
        " --dataset {input.dataset} --reference {input.reference} --out {output} --threads {threads} 2>&1 | tee {log}"
