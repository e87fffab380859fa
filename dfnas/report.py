"""The report stage: the paper's comparison tables and figures from every output of a run.

Per algorithm, one row per data source the search ran on (natural data, each synthetic variant,
the random architecture) with top-1 on the natural test split as mean +- standard deviation over
seeds, parameters, multiply-adds, search time and the data the search used; as CSV (numbers) and
Markdown (formatted). ``summary.md`` says the main result in one sentence per algorithm: top-1 of
the architecture searched on synthetic data minus that searched on natural data, in points, with
the spread of the per-seed differences. Figures: the table as bars with error bars, the search
curves, the soft-label entropy per synthesis round and, for SPOS, the ranking check.

Everything is read from the file contracts under ``results/<run>/`` (retrain metrics, architecture
JSONs, search histories, synthesis quality, SPOS ranking), for the algorithms, sources and seeds
of the config, and aggregated with pandas.

    python -m dfnas.report --config config.yaml --run-dir results/default --out-dir results/default/report
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.layout import Layout, arms, ordered_sources, ranked
from dfnas.plots import pyplot, save_figure
from dfnas.runtime import read_json, write_csv, write_text

NAMES = {"darts": "DARTS", "spos": "SPOS", "proxyless": "ProxylessNAS"}


def source_label(source: str) -> str:
    if source == "natural":
        return "natural data"
    if source == "random":
        return "random architecture"
    return f"synthetic data ({source})"


NEEDED = ("the report", "run the workflow first")


def collect(layout: Layout, cfg: dict) -> list[dict]:
    """One record per (algorithm, source, seed): the retrain metrics and how the search found it."""
    records = []
    for algorithm, source, seed in arms(cfg):
        metrics = read_json(layout.metrics(algorithm, source, seed), *NEEDED)
        arch = read_json(layout.architecture(algorithm, source, seed), *NEEDED)
        found = arch.get("found_by", {})
        records.append({
            "algorithm": algorithm, "source": source, "seed": seed,
            "top1": metrics["top1"], "top5": metrics.get("top5"),
            "parameters": metrics["parameters"], "multiply_adds": metrics["multiply_adds"],
            "search_seconds": found.get("search_seconds", 0.0), "data_images": found.get("data_images", 0),
            "weight_updates": found.get("weight_updates", 0),
            "retrain_seconds": metrics.get("train_seconds"),
        })
    return records


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def arm_rows(records: list[dict], algorithm: str) -> list[dict]:
    """The table of one algorithm: one row per source (in the records' order), numbers over seeds."""
    import pandas as pd

    df = pd.DataFrame([r for r in records if r["algorithm"] == algorithm])
    df["top1"] = 100 * df["top1"]
    grouped = df.groupby("source", sort=False).agg(
        seeds=("seed", "count"), top1_mean=("top1", "mean"), top1_std=("top1", "std"),
        parameters=("parameters", "mean"), multiply_adds=("multiply_adds", "mean"),
        search_seconds=("search_seconds", "mean"), data_images=("data_images", "first"),
        weight_updates=("weight_updates", "mean"))
    rows = []
    for source, g in grouped.iterrows():
        images = int(g["data_images"])
        data = ("none" if source == "random" else
                f"{images} natural images" if source == "natural" else f"{images} synthetic images")
        rows.append({
            "searched_on": source_label(source), "source": source, "seeds": int(g["seeds"]),
            "top1_mean": round(float(g["top1_mean"]), 4),
            "top1_std": None if pd.isna(g["top1_std"]) else round(float(g["top1_std"]), 4),
            "parameters": round(float(g["parameters"])), "multiply_adds": round(float(g["multiply_adds"])),
            "search_seconds": round(float(g["search_seconds"]), 1), "weight_updates": round(float(g["weight_updates"])),
            "data": data,
        })
    return rows


def format_top1(row: dict) -> str:
    if row["top1_std"] is None:
        return f"{row['top1_mean']:.2f}"
    return f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f}"


def markdown_table(rows: list[dict]) -> str:
    header = ["searched on", "top-1 (%)", "seeds", "parameters", "multiply-adds", "search time", "weight updates",
              "data used for the search"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["searched_on"], format_top1(r), str(r["seeds"]), f"{r['parameters']:,}",
                 f"{r['multiply_adds'] / 1e6:.2f}M", format_seconds_short(r["search_seconds"]),
                 f"{r['weight_updates']:,}" if r["weight_updates"] else "none", r["data"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_seconds_short(seconds: float) -> str:
    if not seconds:
        return "0 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def difference(records: list[dict], algorithm: str, source: str, reference: str = "natural") -> dict | None:
    """Top-1 of ``source`` minus ``reference`` in points: per-seed differences, their mean and spread."""
    by_seed = {}
    for r in records:
        if r["algorithm"] == algorithm and r["source"] in (source, reference):
            by_seed.setdefault(r["seed"], {})[r["source"]] = 100 * r["top1"]
    diffs = [v[source] - v[reference] for v in by_seed.values() if source in v and reference in v]
    if not diffs:
        return None
    mean, std = mean_std(diffs)
    return {"points": mean, "std": None if math.isnan(std) else std, "seeds": len(diffs)}


def summary_sentence(records: list[dict], algorithm: str, rankings: dict) -> str:
    name = NAMES.get(algorithm, algorithm)
    rows = {r["source"]: r for r in arm_rows(records, algorithm)}
    synthetic = [s for s in rows if s not in ("natural", "random")]
    if "natural" not in rows or not synthetic:
        return f"{name}: the table has no natural-versus-synthetic comparison (sources {', '.join(rows)})."
    main = "full" if "full" in synthetic else synthetic[0]
    d = difference(records, algorithm, main)
    spread = (f"± {d['std']:.2f} over {d['seeds']} seeds" if d["std"] is not None else "one seed, no spread")
    text = (f"{name}: the architecture searched on synthetic data ({main}) reaches {format_top1(rows[main])}% top-1 "
            f"against {format_top1(rows['natural'])}% when searched on natural data, {d['points']:+.2f} points "
            f"({spread})")
    if "random" in rows:
        text += f"; a random architecture reaches {format_top1(rows['random'])}%"
    taus = [v["kendall_tau"] for (alg, src, _), v in rankings.items() if alg == algorithm and src == main]
    taus = [t for t in taus if t is not None]
    if taus:
        text += f"; the {main} supernet ranks paths with Kendall tau {sum(taus) / len(taus):.2f} against natural data"
    return text + "."


# --------------------------------------------------------------------------------------------
# Figures


def plot_accuracy(tables: dict[str, list[dict]], path: Path) -> None:
    """The tables as bars: top-1 per source, error bars one standard deviation over seeds."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.6), squeeze=False)
    colors = {"natural": "tab:green", "random": "tab:gray"}
    for ax, (algorithm, rows) in zip(axes[0], tables.items()):
        means = [r["top1_mean"] for r in rows]
        errs = [r["top1_std"] or 0.0 for r in rows]
        ax.bar(range(len(rows)), means, yerr=errs, capsize=4,
               color=[colors.get(r["source"], "tab:blue") for r in rows])
        ax.set_xticks(range(len(rows)), [r["source"] for r in rows], rotation=20)
        low = min(m - e for m, e in zip(means, errs))
        ax.set_ylim(max(0, low - 5), min(100, max(m + e for m, e in zip(means, errs)) + 2))
        for i, m in enumerate(means):
            ax.text(i, m, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(NAMES.get(algorithm, algorithm))
        ax.set_ylabel("top-1 on the natural test split (%)")
    save_figure(fig, path)


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot_search_curves(layout: Layout, search_cfg: dict, path: Path) -> None:
    """Per algorithm: held-out accuracy (or training accuracy) per epoch of each search; for SPOS
    also the best score per generation of the evolution."""
    plt = pyplot()
    algorithms = search_cfg["algorithms"]
    fig, axes = plt.subplots(1, len(algorithms), figsize=(4.4 * len(algorithms), 3.4), squeeze=False)
    for ax, algorithm in zip(axes[0], algorithms):
        for source in ordered_sources(search_cfg["sources"]):
            if source == "random":
                continue
            for seed in search_cfg["seeds"]:
                rows = read_history(Path(layout.history(algorithm, source, seed)))
                epochs = [r for r in rows if r.get("epoch")]
                column = "val_acc" if epochs and epochs[0].get("val_acc") else "train_acc"
                if epochs and epochs[0].get(column):
                    ax.plot([int(r["epoch"]) for r in epochs], [float(r[column]) for r in epochs], marker=".",
                            label=f"{source} s{seed} ({column.split('_')[0]})")
                gens = [r for r in rows if r.get("generation")]
                if gens:
                    last = int(epochs[-1]["epoch"]) if epochs else 0
                    ax.plot([last + int(r["generation"]) for r in gens], [float(r["best_score"]) for r in gens],
                            linestyle="--", label=f"{source} s{seed} (evolution best)")
        ax.set_xlabel("epoch (then generation)" if algorithm == "spos" else "epoch")
        ax.set_ylabel("accuracy")
        ax.set_title(NAMES.get(algorithm, algorithm))
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_entropy(qualities: dict[str, dict], path: Path) -> None:
    """Soft-label entropy of the targets of each synthesis round, per variant: recursive label
    calibration shows as entropy rising after round 0."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for variant, q in qualities.items():
        rounds = q.get("rounds", [])
        ax.plot([r["round"] for r in rounds], [r["target_entropy"] for r in rounds], marker="o", label=variant)
    ax.set_xlabel("synthesis round")
    ax.set_ylabel("target entropy (nats)")
    ax.set_title("soft-label entropy per round")
    ax.legend(fontsize=8)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------


def make_report(cfg: dict, run_dir: Path, out_dir: Path, log=print) -> dict:
    search_cfg = cfg["search"]
    layout = Layout.of(run_dir)
    records = collect(layout, cfg)
    qualities = {v: read_json(layout.quality(v), *NEEDED) for v in cfg["synthesis"]["variants"]}
    rankings = {("spos", source, seed): read_json(layout.ranking(source, seed), *NEEDED)
                for source, seed in ranked(cfg)}
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {}
    for algorithm in search_cfg["algorithms"]:
        rows = arm_rows(records, algorithm)
        tables[algorithm] = rows
        write_csv(out_dir / f"{algorithm}.csv", rows)
        write_text(out_dir / f"{algorithm}.md", f"## {NAMES.get(algorithm, algorithm)}\n\n" + markdown_table(rows))
    sentences = [summary_sentence(records, a, rankings) for a in search_cfg["algorithms"]]
    quality_lines = [
        f"| {v} | {100 * q['teacher_agreement_round0']:.1f}% | "
        + ", ".join(f"{r['target_entropy']:.2f}" for r in q["rounds"])
        + f" | {q.get('student', {}).get('data_efficiency', math.nan):.3f} |" for v, q in qualities.items()]
    text = (f"# dfnas report: run {cfg['run']}\n\n" + "\n\n".join(sentences) + "\n\n"
            + "".join(f"## {NAMES.get(a, a)}\n\n{markdown_table(rows)}\n" for a, rows in tables.items())
            + "## Synthetic data\n\n| variant | teacher agreement (round 0) | target entropy per round (nats) "
              "| student data efficiency |\n|---|---|---|---|\n" + "\n".join(quality_lines) + "\n")
    if rankings:
        text += ("\n## SPOS ranking check\n\n| source | seed | paths | Kendall tau |\n|---|---|---|---|\n"
                 + "\n".join(f"| {src} | {seed} | {len(r['paths'])} | "
                             + ("n/a" if r["kendall_tau"] is None else f"{r['kendall_tau']:.3f}") + " |"
                             for (_, src, seed), r in rankings.items()) + "\n")
    write_text(out_dir / "summary.md", text)
    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    plot_accuracy(tables, figures / "accuracy.png")
    plot_search_curves(layout, search_cfg, figures / "search_curves.png")
    plot_entropy(qualities, figures / "soft_label_entropy.png")
    for sentence in sentences:
        log(sentence)
    return {"tables": tables, "summary": sentences}


@cli_main
def main(argv=None):
    parser = stage_parser("report", __doc__, threads=False)
    parser.add_argument("--run-dir", required=True, help="results/<run>: the outputs of the workflow")
    parser.add_argument("--out-dir", required=True, help="where the tables, summary and figures go")
    args = parser.parse_args(argv)
    make_report(stage_config(args), Path(args.run_dir), Path(args.out_dir))


if __name__ == "__main__":
    main()
