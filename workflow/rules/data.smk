# Natural data: make the dataset available (system folder, data.root or download) and describe it.


rule data:
    output:
        L.data_json(),
    params:
        cfg=job_params("data"),
    log:
        L.log("data"),
    priority: 100
    # As many cores as the teacher that follows: the teacher, the first long job, then finds them
    # all free, instead of waiting behind jobs started beside this one.
    threads: config["teacher"]["threads"] or config["threads"]
    conda:
        ENV
    shell:
        "python -m dfnas.data --config-json {params.cfg:q} --out {output} 2>&1 | tee {log}"
