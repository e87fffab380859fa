# Natural data: make the dataset available (system folder, data.root or download) and describe it.


# A local rule: under a cluster profile it runs where Snakemake runs (compute nodes are often
# offline), and it is light: a download, an extraction, a description.
rule data:
    output:
        L.data_json(),
    log:
        L.log("data"),
    priority: 100
    localrule: True
    conda:
        ENV
    # As many cores as the teacher that follows: the teacher, the first long job, then finds them
    # all free, instead of waiting behind jobs started beside this one.
    threads: config["teacher"]["threads"] or config["threads"]
    params:
        cfg=job_params("data"),
    shell:
        "python -m dfnas.data --config-json {params.cfg:q} --out {output} 2>&1 | tee {log}"
