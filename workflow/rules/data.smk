# Natural data: make the dataset available (system folder, data.root or download) and describe it.


rule data:
    output:
        L.data_json(),
    log:
        L.log("data"),
    priority: 100
    conda:
        ENV
    # As many cores as the teacher that follows: the teacher, the first long job, then finds them
    # all free, instead of waiting behind jobs started beside this one.
    threads: config["teacher"]["threads"] or config["threads"]
    params:
        cfg=job_params("data"),
    shell:
        "python -m dfnas.data --config-json {params.cfg:q} --out {output} 2>&1 | tee {log}"
