# The report: the paper's tables (per algorithm: natural vs each synthetic variant vs random, 95%
# intervals over seeds), the summary computed from them, the goals, the fidelity table and the
# figures, from every retrain, search, quality, ranking and fidelity output.
# `snakemake --report report.html` gathers what is flagged report() below into a browsable page.


rule report:
    input:
        metrics=[L.metrics(*arm) for arm in ARMS],
        archs=[L.architecture(*arm) for arm in ARMS],
        histories=[L.history(*arm) for arm in ARMS],
        quality=[L.quality(v) for v in VARIANTS],
        rankings=[L.ranking(source, seed) for source, seed in RANKED],
        supernet_tests=[L.supernet_test(*arm) for arm in SUPERNET_TESTED],
        fidelity=[L.fidelity_proxy(space, source) for space, source in FIDELITY],
        truth=[L.fidelity_truth(*truth) for truth in FIDELITY_TRUTH],
        students=[L.student(*student) for student in STUDENTS],
    output:
        summary=report(
            L.report("summary.md"),
            caption="../report/summary.rst",
            category="1. Results",
        ),
        tables=report(
            [L.report(f"{a}.md") for a in ALGORITHMS],
            caption="../report/table.rst",
            category="1. Results",
        ),
        csv=[L.report(f"{a}.csv") for a in ALGORITHMS],
        accuracy=report(
            L.report("figures", "accuracy.png"),
            caption="../report/accuracy.rst",
            category="1. Results",
        ),
        curves=report(
            L.report("figures", "search_curves.png"),
            caption="../report/search_curves.rst",
            category="3. Search",
        ),
        entropy=report(
            L.report("figures", "soft_label_entropy.png"),
            caption="../report/entropy.rst",
            category="2. Synthetic data",
        ),
        fidelity=(
            [
                L.report("fidelity.md"),
                L.report("fidelity.csv"),
                report(
                    L.report("figures", "fidelity.png"),
                    caption="../report/fidelity.rst",
                    category="3. Search",
                ),
            ]
            if FIDELITY
            else []
        ),
        students=[L.report("students.csv")] if STUDENTS else [],
    log:
        L.log("report"),
    benchmark:
        L.benchmark("report")
    conda:
        ENV
    threads: 1
    params:
        cfg=job_params("report"),
        run_dir=lambda wc, output: os.path.dirname(os.path.dirname(output.summary)),
        out_dir=lambda wc, output: os.path.dirname(output.summary),
    shell:
        "python -m dfnas.report --config-json {params.cfg:q} --run-dir {params.run_dir} --out-dir {params.out_dir}"
        " 2>&1 | tee {log}"
