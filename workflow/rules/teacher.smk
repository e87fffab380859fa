# The teacher: trained stand-in, local file, URL or torchvision weights; then its test accuracy.


# A teacher that is downloaded (url:, torchvision:) or copied (file:) is fetched where Snakemake
# runs, as a local rule: compute nodes are often offline. Only a stand-in trains on a cluster node.
rule teacher:
    input:
        dataset=rules.data.output[0],
        source=teacher_file_input(),
    output:
        teacher=L.teacher(),
        meta=L.teacher_meta(),
    log:
        L.log("teacher"),
    benchmark:
        L.benchmark("teacher")
    priority: 100
    localrule: config["teacher"]["source"] != "train"
    conda:
        ENV
    threads: config["teacher"]["threads"] or config["threads"]
    resources:
        gpu=GPU if config["teacher"]["source"] == "train" else 0,  # only a stand-in trains
    params:
        cfg=job_params("teacher"),
    shell:
        "python -m dfnas.teacher --config-json {params.cfg:q} --dataset-json {input.dataset}"
        " --out {output.teacher} --threads {threads} 2>&1 | tee {log}"


rule teacher_eval:
    input:
        teacher=rules.teacher.output.teacher,
        dataset=rules.data.output[0],
    output:
        L.teacher_eval(),
    log:
        L.log("teacher_eval"),
    benchmark:
        L.benchmark("teacher_eval")
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=job_params("teacher_eval"),
    shell:
        "python -m dfnas.teacher_eval --config-json {params.cfg:q} --teacher {input.teacher}"
        " --out {output} --threads {threads} 2>&1 | tee {log}"
