# Architecture search: every algorithm x data source x seed is one job; they run side by side.
# A synthetic source reads only its synthetic set and soft-label cache, never natural images.


rule search:
    input:
        unpack(search_inputs),
    output:
        arch=L.architecture("{algorithm}", "{source}", "{seed}"),
        history=L.history("{algorithm}", "{source}", "{seed}"),
        figure=L.architecture_figure("{algorithm}", "{source}", "{seed}"),
        network=L.search_network("{algorithm}", "{source}", "{seed}"),
    log:
        L.log("search/{algorithm}_{source}_seed{seed}"),
    benchmark:
        L.benchmark("search/{algorithm}_{source}_seed{seed}")
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        source="|".join(s for s in SOURCES if s != "random"),
        seed=r"\d+",
    priority: 20
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=search_gpus,
    params:
        cfg=job_params("search"),
        data=search_data_args,
        out_dir=lambda wc, output: os.path.dirname(output.arch),
        python=lambda wc: launcher(search_gpus(wc)),
    shell:
        "{params.python} -m dfnas.search --config-json {params.cfg:q} --algorithm {wildcards.algorithm}"
        " --source {wildcards.source} --seed {wildcards.seed} {params.data} --out-dir {params.out_dir}"
        " --threads {threads} 2>&1 | tee {log}"


# The random baseline: an architecture drawn from the space with the seed (under the space's FLOPs
# bound). It reads no data; it is a job of its own so that it has no search network to write.
rule random_architecture:
    input:
        natural=rules.data.output[0],
    output:
        arch=L.architecture("{algorithm}", "random", "{seed}"),
        history=L.history("{algorithm}", "random", "{seed}"),
        figure=L.architecture_figure("{algorithm}", "random", "{seed}"),
    log:
        L.log("search/{algorithm}_random_seed{seed}"),
    benchmark:
        L.benchmark("random_architecture/{algorithm}_seed{seed}")
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        seed=r"\d+",
    conda:
        ENV
    threads: 1
    params:
        cfg=job_params("random_architecture"),
        out_dir=lambda wc, output: os.path.dirname(output.arch),
    shell:
        "python -m dfnas.search --config-json {params.cfg:q} --algorithm {wildcards.algorithm}"
        " --source random --seed {wildcards.seed} --dataset-json {input.natural} --out-dir {params.out_dir}"
        " --threads {threads} 2>&1 | tee {log}"


# Did each search network learn the task? Scored on natural test images after its search has
# ended, for the report; an evaluation, like retrain: the synthetic search never reads them.
rule supernet_test:
    input:
        unpack(supernet_test_inputs),
        network=L.search_network("{algorithm}", "{source}", "{seed}"),
        arch=L.architecture("{algorithm}", "{source}", "{seed}"),
    output:
        L.supernet_test("{algorithm}", "{source}", "{seed}"),
    log:
        L.log("search/{algorithm}_{source}_seed{seed}_supernet_test"),
    benchmark:
        L.benchmark("supernet_test/{algorithm}_{source}_seed{seed}")
    wildcard_constraints:
        algorithm="|".join(ALGORITHMS),
        source="|".join(s for s in SOURCES if s != "random"),
        seed=r"\d+",
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=job_params("supernet_test"),
        data=search_data_args,
    shell:
        "python -m dfnas.supernet_test --config-json {params.cfg:q} --network {input.network}"
        " --architecture {input.arch} {params.data} --out {output} --threads {threads} 2>&1 | tee {log}"


# How faithfully a synthetic variant ranks SPOS paths: the supernet searched on it scores fixed
# paths on synthetic and on natural validation data (Kendall tau). An evaluation, like retrain: it
# reads natural data, which the synthetic search itself never does.
rule ranking:
    input:
        network=L.search_network("spos", "{source}", "{seed}"),
        dataset=L.dataset("{source}"),
        labels=L.soft_labels("{source}"),
        natural=rules.data.output[0],
    output:
        json=L.ranking("{source}", "{seed}"),
        csv=L.ranking("{source}", "{seed}", "csv"),
        figure=report(
            L.ranking("{source}", "{seed}", "png"),
            caption="../report/ranking.rst",
            category="3. Search",
            labels=lambda wc: {"source": wc.source, "seed": wc.seed},
        ),
    log:
        L.log("search/spos_{source}_seed{seed}_ranking"),
    benchmark:
        L.benchmark("ranking/spos_{source}_seed{seed}")
    wildcard_constraints:
        source="|".join(VARIANTS),
        seed=r"\d+",
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=GPU,
    params:
        cfg=job_params("ranking"),
        out_dir=lambda wc, output: os.path.dirname(output.json),
    shell:
        "python -m dfnas.ranking --config-json {params.cfg:q} --network {input.network} --dataset {input.dataset}"
        " --labels {input.labels} --out-dir {params.out_dir} --threads {threads} 2>&1 | tee {log}"
