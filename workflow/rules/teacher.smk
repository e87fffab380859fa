# The teacher: trained stand-in, local file, URL or torchvision weights; then its test accuracy.


rule teacher:
    input:
        dataset=rules.data.output[0],
    output:
        teacher=f"{RESULTS}/teacher/teacher.pt",
        meta=f"{RESULTS}/teacher/teacher.json",
    params:
        cfg=stage_config("data", "teacher"),
    log:
        f"{LOGS}/teacher.log",
    benchmark:
        f"{BENCH}/teacher.tsv"
    priority: 100
    threads: config["teacher"]["threads"] or config["threads"]
    resources:
        gpu=GPU if config["teacher"]["source"] == "train" else 0,  # only a stand-in trains
    conda:
        ENV
    shell:
        "python -m dfnas.teacher --config-json {params.cfg:q} --dataset-json {input.dataset}"
        " --out {output.teacher} --threads {threads} 2>&1 | tee {log}"


rule teacher_eval:
    input:
        teacher=rules.teacher.output.teacher,
        dataset=rules.data.output[0],
    output:
        f"{RESULTS}/teacher/eval.json",
    params:
        cfg=stage_config("data", "teacher"),
    log:
        f"{LOGS}/teacher_eval.log",
    benchmark:
        f"{BENCH}/teacher_eval.tsv"
    threads: config["threads"]
    conda:
        ENV
    shell:
        "python -m dfnas.teacher_eval --config-json {params.cfg:q} --teacher {input.teacher}"
        " --out {output} --threads {threads} 2>&1 | tee {log}"
