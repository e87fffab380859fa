# The report: the paper's tables (per algorithm: natural vs each synthetic variant vs random), the
# one-sentence summary and the figures, from every retrain, search, quality and ranking output.
# `snakemake --report report.html` gathers what is flagged report() below into a browsable page.

REPORT = f"{RESULTS}/report"
ARMS = dict(algorithm=ALGORITHMS, source=SOURCES, seed=SEEDS)


rule report:
    input:
        metrics=expand(f"{RESULTS}/retrain/{{algorithm}}/{{source}}/seed{{seed}}/metrics.json", **ARMS),
        archs=expand(f"{SEARCH}/{{algorithm}}/{{source}}/seed{{seed}}/architecture.json", **ARMS),
        histories=expand(f"{SEARCH}/{{algorithm}}/{{source}}/seed{{seed}}/history.csv", **ARMS),
        quality=expand(f"{SYN}/{{variant}}/quality.json", variant=VARIANTS),
        rankings=expand(f"{SEARCH}/spos/{{source}}/seed{{seed}}/ranking.json", source=RANKED, seed=SEEDS),
    output:
        summary=report(f"{REPORT}/summary.md", caption="../report/summary.rst", category="1. Results"),
        tables=report(expand(f"{REPORT}/{{algorithm}}.md", algorithm=ALGORITHMS), caption="../report/table.rst",
                      category="1. Results"),
        csv=expand(f"{REPORT}/{{algorithm}}.csv", algorithm=ALGORITHMS),
        accuracy=report(f"{REPORT}/figures/accuracy.png", caption="../report/accuracy.rst", category="1. Results"),
        curves=report(f"{REPORT}/figures/search_curves.png", caption="../report/search_curves.rst",
                      category="3. Search"),
        entropy=report(f"{REPORT}/figures/soft_label_entropy.png", caption="../report/entropy.rst",
                       category="2. Synthetic data"),
    params:
        cfg=stage_config("run", "search", "synthesis"),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    threads: 1
    conda:
        ENV
    shell:
        "python -m dfnas.report --config-json {params.cfg:q} --run-dir {RESULTS} --out-dir {REPORT} 2>&1 | tee {log}"
