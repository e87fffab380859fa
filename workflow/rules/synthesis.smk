# Data-free synthesis: shards per variant (independent jobs, one GPU each on a cluster), their
# merge into one dataset with a train/val split, and the cached soft labels the searches replay.
# None of these rules reads natural data.

SYN = f"{RESULTS}/synthesis"
VARIANTS = config["synthesis"]["variants"]
SHARD_IDS = [f"{s:03d}" for s in range(config["synthesis"]["shards"])]


def synthesis_params():
    """The keys a shard depends on: adding a variant or changing the split reruns no shard."""
    skip = ("variants", "val_per_class")
    cfg = json.loads(stage_config("synthesis"))
    cfg["synthesis"] = {k: v for k, v in cfg["synthesis"].items() if k not in skip}
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))


wildcard_constraints:
    variant="|".join(VARIANTS),
    shard=r"\d{3}",


rule synthesize:
    input:
        teacher=rules.teacher.output.teacher,
    output:
        f"{SYN}/{{variant}}/shard_{{shard}}.h5",
    params:
        cfg=synthesis_params(),
    log:
        f"{LOGS}/synthesize/{{variant}}_{{shard}}.log",
    benchmark:
        f"{BENCH}/synthesize/{{variant}}_{{shard}}.tsv"
    priority: 80
    threads: config["threads"]
    resources:
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m dfnas.synthesize --config-json {params.cfg:q} --teacher {input.teacher}"
        " --variant {wildcards.variant} --shard {wildcards.shard} --out {output} --threads {threads} 2>&1 | tee {log}"


rule merge:
    input:
        teacher=rules.teacher.output.teacher,
        shards=expand(f"{SYN}/{{{{variant}}}}/shard_{{shard}}.h5", shard=SHARD_IDS),
    output:
        dataset=f"{SYN}/{{variant}}/dataset.h5",
        grid=report(f"{SYN}/{{variant}}/samples.png", caption="../report/samples.rst", category="2. Synthetic data",
                    labels=lambda wc: {"variant": wc.variant}),
    params:
        cfg=stage_config("synthesis"),
    log:
        f"{LOGS}/merge/{{variant}}.log",
    benchmark:
        f"{BENCH}/merge/{{variant}}.tsv"
    priority: 80
    threads: 1
    conda:
        ENV
    shell:
        "python -m dfnas.merge --config-json {params.cfg:q} --teacher {input.teacher} --variant {wildcards.variant}"
        " --shards {input.shards} --out {output.dataset} --grid {output.grid} 2>&1 | tee {log}"


rule soft_labels:
    input:
        teacher=rules.teacher.output.teacher,
        dataset=rules.merge.output.dataset,
    output:
        f"{SYN}/{{variant}}/soft_labels.h5",
    params:
        cfg=stage_config("soft_labels"),
    log:
        f"{LOGS}/soft_labels/{{variant}}.log",
    benchmark:
        f"{BENCH}/soft_labels/{{variant}}.tsv"
    priority: 80
    threads: config["threads"]
    resources:
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m dfnas.soft_labels --config-json {params.cfg:q} --teacher {input.teacher}"
        " --dataset {input.dataset} --out {output} --threads {threads} 2>&1 | tee {log}"


# The reference of the data-efficiency score: the quality student distilled from as many natural
# images as a variant has synthetic training images. The same for every variant, so made once
# (sized by the first variant's training split; all variants have the same size).
rule natural_reference:
    input:
        teacher=rules.teacher.output.teacher,
        dataset=f"{SYN}/{VARIANTS[0]}/dataset.h5",
        natural=rules.data.output[0],
    output:
        f"{SYN}/natural_reference.json",
    params:
        cfg=stage_config("data", "quality"),
    log:
        f"{LOGS}/synthesis_quality/natural_reference.log",
    benchmark:
        f"{BENCH}/natural_reference.tsv"
    threads: config["threads"]
    resources:
        gpu=GPU,
    conda:
        ENV
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
        f"{SYN}/{{variant}}/quality.json",
    params:
        cfg=stage_config("data", "quality"),
    log:
        f"{LOGS}/synthesis_quality/{{variant}}.log",
    benchmark:
        f"{BENCH}/synthesis_quality/{{variant}}.tsv"
    threads: config["threads"]
    conda:
        ENV
    shell:
        "python -m dfnas.synthesis_quality --config-json {params.cfg:q} --teacher {input.teacher}"
        " --dataset {input.dataset} --reference {input.reference} --out {output} --threads {threads} 2>&1 | tee {log}"
