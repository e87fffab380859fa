# Natural data: make the dataset available (system folder, data.root or download) and describe it.


rule data:
    output:
        f"{RESULTS}/data/dataset.json",
    params:
        cfg=stage_config("data"),
    log:
        f"{LOGS}/data.log",
    threads: 1
    conda:
        ENV
    shell:
        "python -m dfnas.data --config-json {params.cfg:q} --out {output} 2>&1 | tee {log}"
