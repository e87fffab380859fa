"""The report stage: the paper's comparison tables, what their intervals say, and the figures.

Per algorithm, one row per data source the search ran on (natural data, each synthetic variant,
the random architecture): top-1 on the natural test split as mean +- the half-width of its 95%
confidence interval over seeds (Student t), the paired difference to the search on natural data
(per seed, then mean +- 95% interval), the search's final held-out accuracy (how well its supernet
learned; a search whose supernet stayed near chance is flagged: its pick is a random pick), the
search networks' accuracy on natural test images (`dfnas.supernet_test`: one scale for every
source, where a synthetic search's held-out accuracy is agreement with the teacher; for SPOS the
found path, where its held-out figure is the first generation's mean), parameters, multiply-adds, search time, weight updates and data; as CSV (numbers) and Markdown.

``summary.md`` says what the intervals say, in sentences computed from them ("better by", "worse
by", "indistinguishable within"), checks the comparison's goals (synthetic on par with natural
within ``report.margin`` points, above random; with a fidelity stage, `full` ranking architectures
best and `noise` worst), and adds the fidelity table (Kendall tau-b and top-quartile overlap of each
source's proxy ranking against the retrained accuracies, percentile-bootstrap intervals over the
architectures), the synthetic data's quality and the SPOS ranking check. Figures: the tables as
bars with 95% intervals, the search curves, the soft-label entropy per round and the fidelity.
Where Snakemake timed the jobs (``benchmarks/``), ``jobs.csv`` and a summary table say where the
run's time went: per stage (and algorithm or space), the job count, mean and total wall time and
peak memory.

Everything is read from the file contracts under ``results/<run>/`` (retrain metrics, architecture
JSONs, search histories, synthesis quality, SPOS ranking, fidelity scores) for the algorithms,
sources and seeds of the config.

    python -m dfnas.report --config config.yaml --run-dir results/default --out-dir results/default/report
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.layout import (Layout, arms, fidelity_sources, fidelity_spaces, ordered_sources, ranked, students,
                          supernet_tested)
from dfnas.plots import pyplot, save_figure
from dfnas.errors import DfnasError
from dfnas.runtime import derived_seed, read_json, write_csv, write_text
from dfnas.stats import bootstrap_ci, compare, format_ci, kendall_tau_b, mean_ci, paired_difference, top_overlap

NAMES = {"darts": "DARTS", "spos": "SPOS", "proxyless": "ProxylessNAS"}
ABLATIONS = ("no_recursive", "no_regional", "deepinversion", "noise")


def source_label(source: str) -> str:
    if source == "natural":
        return "natural data"
    if source == "random":
        return "random architecture"
    return f"synthetic data ({source})"


NEEDED = ("the report", "run the workflow first")
METRICS = ("parameters", "multiply_adds")  # what every table reads from a metrics.json, with its top-1
STUDENT_METRICS = ("synthetic_training_images", "parameters", "multiply_adds", "train_seconds")  # and agreement


def collect(layout: Layout, cfg: dict) -> list[dict]:
    """One record per (algorithm, source, seed): the retrain metrics and how the search found it."""
    records = []
    tested = set(supernet_tested(cfg))
    for algorithm, source, seed in arms(cfg):
        metrics = read_json(layout.metrics(algorithm, source, seed), *NEEDED, numbers=METRICS, fractions=("top1",))
        arch = read_json(layout.architecture(algorithm, source, seed), *NEEDED)
        found = arch.get("found_by", {})
        records.append({
            "algorithm": algorithm, "source": source, "seed": seed,
            "top1": metrics["top1"], "top5": metrics.get("top5"),
            "parameters": metrics["parameters"], "multiply_adds": metrics["multiply_adds"],
            "search_seconds": found.get("search_seconds", 0.0), "data_images": found.get("data_images", 0),
            "weight_updates": found.get("weight_updates", 0),
            "heldout_acc": found.get("heldout_acc"), "chance": found.get("chance"),
            "retrain_seconds": metrics.get("train_seconds"),
            "supernet_test_acc": (read_json(layout.supernet_test(algorithm, source, seed), *NEEDED,
                                            fractions=("test_top1",))["test_top1"]
                                  if (algorithm, source, seed) in tested else None),
        })
    return records


def near_chance(record: dict, threshold: float) -> bool:
    """Whether a search's supernet stayed near chance: held-out accuracy below
    chance + threshold x (1 - chance)."""
    acc, chance = record.get("heldout_acc"), record.get("chance")
    return acc is not None and chance is not None and acc < chance + threshold * (1 - chance)


def top1_by_seed(records: list[dict], algorithm: str, source: str) -> dict[int, float]:
    """Top-1 in percent per seed of one arm."""
    return {r["seed"]: 100 * r["top1"] for r in records if r["algorithm"] == algorithm and r["source"] == source}


def _round(value: float, digits: int = 4):
    return None if value is None or math.isnan(value) else round(float(value), digits)


def arm_rows(records: list[dict], algorithm: str, threshold: float = 0.25) -> list[dict]:
    """The table of one algorithm: one row per source (in the records' order), numbers over seeds:
    top-1 and the paired difference to natural data as mean and 95% half-width, the search's
    held-out accuracy (percent) likewise, and the seeds whose supernet stayed near chance."""
    rows = []
    for source in dict.fromkeys(r["source"] for r in records if r["algorithm"] == algorithm):
        group = [r for r in records if r["algorithm"] == algorithm and r["source"] == source]
        top1 = top1_by_seed(records, algorithm, source)
        mean, half = mean_ci(top1.values())
        diff = (paired_difference(top1, top1_by_seed(records, algorithm, "natural"))
                if source != "natural" else None)
        heldout = [100 * r["heldout_acc"] for r in group if r["heldout_acc"] is not None]
        h_mean, h_half = mean_ci(heldout)
        tested = [100 * r["supernet_test_acc"] for r in group if r.get("supernet_test_acc") is not None]
        t_mean, t_half = mean_ci(tested)
        images = int(group[0]["data_images"])
        data = ("none" if source == "random" else
                f"{images} natural images" if source == "natural" else f"{images} synthetic images")
        rows.append({
            "searched_on": source_label(source), "source": source, "seeds": len(group),
            "top1_mean": _round(mean), "top1_ci95": _round(half),
            "minus_natural_mean": _round(diff["mean"]) if diff else None,
            "minus_natural_ci95": _round(diff["half"]) if diff else None,
            "heldout_acc_mean": _round(h_mean, 2) if heldout else None,
            "heldout_acc_ci95": _round(h_half, 2) if heldout else None,
            "supernet_test_mean": _round(t_mean, 2) if tested else None,
            "supernet_test_ci95": _round(t_half, 2) if tested else None,
            "near_chance_seeds": " ".join(str(r["seed"]) for r in group if near_chance(r, threshold)),
            "parameters": round(sum(r["parameters"] for r in group) / len(group)),
            "multiply_adds": round(sum(r["multiply_adds"] for r in group) / len(group)),
            "search_seconds": round(sum(r["search_seconds"] for r in group) / len(group), 1),
            "weight_updates": round(sum(r["weight_updates"] for r in group) / len(group)),
            "data": data,
        })
    return rows


def _ci(mean, half, digits: int = 2) -> str:
    return format_ci(mean, math.nan if half is None else half, digits)


def format_top1(row: dict) -> str:
    return _ci(row["top1_mean"], row["top1_ci95"])


def markdown_table(rows: list[dict]) -> str:
    header = ["searched on", "top-1 (%)", "minus natural (points)", "search held-out acc. (%)",
              "search network on natural test (%)", "seeds",
              "parameters", "multiply-adds", "search time", "weight updates", "data used for the search"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        diff = "" if r["minus_natural_mean"] is None else (
            f"{r['minus_natural_mean']:+.2f}" if r["minus_natural_ci95"] is None
            else f"{r['minus_natural_mean']:+.2f} ± {r['minus_natural_ci95']:.2f}")
        heldout = "" if r["heldout_acc_mean"] is None else _ci(r["heldout_acc_mean"], r["heldout_acc_ci95"], 1)
        if r["near_chance_seeds"]:
            heldout += f" (near chance: seed {r['near_chance_seeds']})"
        tested = "" if r["supernet_test_mean"] is None else _ci(r["supernet_test_mean"], r["supernet_test_ci95"], 1)
        cells = [r["searched_on"], format_top1(r), diff, heldout, tested, str(r["seeds"]), f"{r['parameters']:,}",
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


def main_variant(rows: dict) -> str | None:
    synthetic = [s for s in rows if s not in ("natural", "random")]
    return ("full" if "full" in synthetic else synthetic[0]) if synthetic else None


def summary_sentence(records: list[dict], algorithm: str, table: list[dict], rankings: dict) -> str:
    """What the table of one algorithm (`arm_rows`) says, computed from its intervals."""
    name = NAMES.get(algorithm, algorithm)
    rows = {r["source"]: r for r in table}
    main = main_variant(rows)
    if "natural" not in rows or main is None:
        return f"{name}: the table has no natural-versus-synthetic comparison (sources {', '.join(rows)})."
    seeds = rows[main]["seeds"]
    synthetic = top1_by_seed(records, algorithm, main)
    d = paired_difference(synthetic, top1_by_seed(records, algorithm, "natural"))
    text = (f"{name} ({seeds} seed{'s' if seeds > 1 else ''}): searched on synthetic data ({main}) "
            f"{format_top1(rows[main])}% top-1, on natural data {format_top1(rows['natural'])}%; synthetic minus "
            f"natural is {compare(d['mean'], d['half'])}")
    if "random" in rows:
        r = paired_difference(synthetic, top1_by_seed(records, algorithm, "random"))
        text += (f"; against a random architecture ({format_top1(rows['random'])}%) synthetic is "
                 f"{compare(r['mean'], r['half'])}")
    learned = [f"{source} {_ci(row['heldout_acc_mean'], row['heldout_acc_ci95'], 1)}%"
               for source, row in rows.items() if row["heldout_acc_mean"] is not None]
    if learned:
        text += f". Search held-out accuracy: {', '.join(learned)}"
    tested = [f"{source} {_ci(row['supernet_test_mean'], row['supernet_test_ci95'], 1)}%"
              for source, row in rows.items() if row["supernet_test_mean"] is not None]
    if tested:
        text += f"; the search networks on natural test images: {', '.join(tested)}"
    stuck = [f"{source} (seed {row['near_chance_seeds']})" for source, row in rows.items() if row["near_chance_seeds"]]
    if stuck:
        text += (f". Near chance, so their pick is a random pick: {', '.join(stuck)}")
    taus = [v["kendall_tau"] for (alg, src, _), v in rankings.items() if alg == algorithm and src == main]
    taus = [t for t in taus if t is not None]
    if taus:
        tau, half = mean_ci(taus)
        text += f". The {main} supernet ranks paths with Kendall tau {_ci(tau, half)} against natural data"
    return text + "."


def goal_lines(records: list[dict], cfg: dict, tables: dict[str, list[dict]], fidelity: list[dict],
               qualities: dict) -> list[str]:
    """The comparison's goals, each checked from the intervals: met, missed, or not testable."""
    margin = cfg["report"]["margin"]
    lines = []
    for algorithm, table in tables.items():
        name = NAMES.get(algorithm, algorithm)
        rows = {r["source"]: r for r in table}
        main = main_variant(rows)
        if main is None or "natural" not in rows:
            continue
        synthetic = top1_by_seed(records, algorithm, main)
        for reference, goal, bound in (("natural", f"within {margin:g} points of natural data or better", -margin),
                                       ("random", "above a random architecture", 0.0)):
            if reference not in rows:
                continue
            d = paired_difference(synthetic, top1_by_seed(records, algorithm, reference))
            if math.isnan(d["half"]):
                verdict = "not testable with one seed"
            else:
                lo, hi = d["mean"] - d["half"], d["mean"] + d["half"]
                verdict = (("met" if lo > bound else "missed") + f" (95% interval of {main} minus {reference}: "
                           f"{lo:+.2f} to {hi:+.2f} points)")
            lines.append(f"- {name}, search on {main} {goal}: {verdict}")
    for space in dict.fromkeys(r["space"] for r in fidelity):
        taus = {r["source"]: r for r in fidelity if r["space"] == space and r["source"] != "natural"}
        if "full" in taus and len(taus) > 1:
            others = {s: r for s, r in taus.items() if s != "full"}
            best = all(taus["full"]["tau"] > r["tau"] for r in others.values() if not math.isnan(r["tau"]))
            apart = all(taus["full"]["tau_low"] > r["tau_high"] for r in others.values())
            lines.append(f"- {NAMES.get(space, space)} fidelity, `full` ranks architectures best of the synthetic "
                         f"sets (Kendall tau-b): {'met' if best else 'missed'}"
                         + (" (intervals apart)" if best and apart else " (intervals overlap)" if best else ""))
        if "noise" in taus and len(taus) > 1:
            others = [r for s, r in taus.items() if s != "noise"]
            last = all(taus["noise"]["tau_high"] < r["tau"] for r in others)
            lines.append(f"- {NAMES.get(space, space)} fidelity, `noise` clearly last (its interval below every "
                         f"other source's tau-b): {'met' if last else 'missed'}")
    eff = {v: q.get("student", {}).get("data_efficiency") for v, q in qualities.items()}
    eff = {v: e for v, e in eff.items() if e is not None}
    if "full" in eff:
        others = [e for v, e in eff.items() if v != "full"]
        ok = eff["full"] >= 0.9 and all(eff["full"] > e for e in others)
        lines.append(f"- `full` data efficiency at least 0.9 and above every ablation: {'met' if ok else 'missed'} "
                     f"({', '.join(f'{v} {e:.3f}' for v, e in eff.items())})")
    return lines


# --------------------------------------------------------------------------------------------
# Fidelity


def student_rows(layout: Layout, cfg: dict) -> list[dict]:
    """One row per data-free student (`students`), from its metrics."""
    rows = []
    for algorithm, variant, seed in students(cfg):
        m = read_json(layout.student(algorithm, variant, seed), *NEEDED, numbers=STUDENT_METRICS,
                      fractions=("teacher_agreement",))
        rows.append({"algorithm": algorithm, "variant": variant, "seed": seed,
                     "teacher_agreement": _round(100 * m["teacher_agreement"], 2),
                     "top1": _round(100 * m["top1"], 2) if "top1" in m else None,
                     "synthetic_training_images": m["synthetic_training_images"],
                     "parameters": m["parameters"], "multiply_adds": m["multiply_adds"],
                     "train_seconds": round(m["train_seconds"], 1)})
    return rows


def student_markdown(rows: list[dict]) -> str:
    lines = ["| algorithm | seed | teacher agreement (%) | top-1 on natural test (%) | parameters | multiply-adds "
             "| synthetic training images |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {NAMES.get(r['algorithm'], r['algorithm'])} | {r['seed']} | {r['teacher_agreement']:.2f} | "
              + ("not scored" if r["top1"] is None else f"{r['top1']:.2f}")
              + f" | {r['parameters']:,} | {r['multiply_adds'] / 1e6:.2f}M | {r['synthetic_training_images']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def proxy_score(row: dict, score: str) -> float:
    """An architecture's proxy score, higher is better: its held-out accuracy, or its held-out loss
    negated (``fidelity.score``)."""
    return row["val_acc"] if score == "accuracy" else -row["val_loss"]


def fidelity_rows(layout: Layout, cfg: dict) -> list[dict]:
    """Per space and source: Kendall tau-b and top-fraction overlap of the proxy scores
    (``fidelity.score``) against the retrained top-1 (the mean of ``fidelity.truth_repeats``
    retrains), with percentile-bootstrap 95% intervals over the architectures. ``truth_sd``: the
    retrains' standard deviation (pooled over the architectures, points), the truth's own noise."""
    k, score, repeats = cfg["fidelity"]["architectures"], cfg["fidelity"]["score"], cfg["fidelity"]["truth_repeats"]
    fraction, resamples = cfg["report"]["top_fraction"], cfg["report"]["bootstrap"]
    rows = []
    for space in fidelity_spaces(cfg):
        retrains = np.array([[read_json(layout.fidelity_truth(space, i, r), *NEEDED, fractions=("top1",))["top1"]
                              for r in range(repeats)] for i in range(k)])
        truth = retrains.mean(1)
        truth_sd = float(100 * np.sqrt(retrains.var(1, ddof=1).mean())) if repeats > 1 else None
        for source in fidelity_sources(cfg):
            proxy = read_json(layout.fidelity_proxy(space, source), *NEEDED)
            by_index = {r["index"]: r for r in proxy["scores"]}
            if sorted(by_index) != list(range(k)):
                raise DfnasError(f"{layout.fidelity_proxy(space, source)}: scores for architectures "
                                 f"{sorted(by_index)}, expected 0..{k - 1} (rerun the fidelity stage)")
            scores = np.array([proxy_score(by_index[i], score) for i in range(k)])
            accuracy = np.array([by_index[i]["val_acc"] for i in range(k)])
            seed = derived_seed(cfg["seed"], "fidelity", "bootstrap", space, source) % (2**32)
            tau_lo, tau_hi = bootstrap_ci(lambda idx: kendall_tau_b(scores[idx], truth[idx]), k, resamples, seed)
            ov_lo, ov_hi = bootstrap_ci(lambda idx: top_overlap(scores[idx], truth[idx], fraction), k, resamples, seed)
            rows.append({"space": space, "source": source, "architectures": k,
                         "tau": kendall_tau_b(scores, truth), "tau_low": tau_lo, "tau_high": tau_hi,
                         "top_overlap": top_overlap(scores, truth, fraction), "overlap_low": ov_lo,
                         "overlap_high": ov_hi, "proxy_mean_acc": float(accuracy.mean()), "score": score,
                         "heldout_images": proxy["heldout_images"], "steps": proxy["steps"],
                         "truth_repeats": repeats, "truth_sd": truth_sd,
                         "truth_span": float(100 * (truth.max() - truth.min())),
                         "scores": scores.tolist(), "truth": truth.tolist()})
    return rows


def fidelity_markdown(rows: list[dict], fraction: float) -> str:
    lines = [f"| space | source | Kendall tau-b [95% interval] | top-{fraction:.0%} overlap [95% interval] "
             "| proxy held-out acc. (mean) | held-out images |", "|---|---|---|---|---|---|"]
    def interval(value, low, high):
        if math.isnan(value):
            return "n/a (constant scores)"
        return f"{value:.2f} [{low:.2f}, {high:.2f}]"

    for r in rows:
        lines.append(f"| {NAMES.get(r['space'], r['space'])} | {r['source']} | "
                     f"{interval(r['tau'], r['tau_low'], r['tau_high'])} | "
                     f"{interval(r['top_overlap'], r['overlap_low'], r['overlap_high'])} | "
                     f"{100 * r['proxy_mean_acc']:.1f}% | {r['heldout_images']} |")
    lines.append("")
    for r in {r["space"]: r for r in rows}.values():  # one line per space: the truth it was ranked against
        noise = ("" if r["truth_sd"] is None else
                 f"; one retrain's standard deviation {r['truth_sd']:.2f} points (pooled over the architectures)")
        lines.append(f"{NAMES.get(r['space'], r['space'])} truth: top-1 after the retrain recipe, the mean of "
                     f"{r['truth_repeats']} retrain(s) per architecture; the {r['architectures']} architectures span "
                     f"{r['truth_span']:.2f} points{noise}.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Figures


def plot_accuracy(tables: dict[str, list[dict]], path: Path) -> None:
    """The tables as bars: top-1 per source, error bars the 95% confidence interval over seeds."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.6), squeeze=False)
    colors = {"natural": "tab:green", "random": "tab:gray"}
    for ax, (algorithm, rows) in zip(axes[0], tables.items()):
        means = [r["top1_mean"] for r in rows]
        errs = [r["top1_ci95"] or 0.0 for r in rows]
        ax.bar(range(len(rows)), means, yerr=errs, capsize=4,
               color=[colors.get(r["source"], "tab:blue") for r in rows])
        ax.set_xticks(range(len(rows)), [r["source"] for r in rows], rotation=20)
        low = min(m - e for m, e in zip(means, errs))
        ax.set_ylim(max(0, low - 5), min(100, max(m + e for m, e in zip(means, errs)) + 2))
        for i, m in enumerate(means):
            ax.text(i, m, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{NAMES.get(algorithm, algorithm)} ({rows[0]['seeds']} seeds, 95% CI)")
        ax.set_ylabel("top-1 on the natural test split (%)")
    save_figure(fig, path)


def plot_fidelity(rows: list[dict], path: Path) -> None:
    """Per space: Kendall tau-b of each source with its bootstrap interval (top), and each
    architecture's proxy score against its retrained top-1 (bottom)."""
    plt = pyplot()
    spaces = list(dict.fromkeys(r["space"] for r in rows))
    fig, axes = plt.subplots(2, len(spaces), figsize=(4.4 * len(spaces), 7), squeeze=False)
    for col, space in enumerate(spaces):
        group = [r for r in rows if r["space"] == space]
        ax = axes[0][col]
        taus = [r["tau"] for r in group]
        err = [[t - r["tau_low"] for t, r in zip(taus, group)], [r["tau_high"] - t for t, r in zip(taus, group)]]
        ax.bar(range(len(group)), taus, yerr=err, capsize=4,
               color=["tab:green" if r["source"] == "natural" else "tab:blue" for r in group])
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set_xticks(range(len(group)), [r["source"] for r in group], rotation=20)
        ax.set_ylim(-1, 1)
        ax.set_ylabel("Kendall tau-b vs retrained top-1")
        ax.set_title(f"{NAMES.get(space, space)}: {group[0]['architectures']} architectures")
        ax = axes[1][col]
        by_loss = group[0]["score"] == "loss"
        for r in group:  # the ranking score as measured: held-out loss (lower ranks higher) or accuracy
            ax.plot([100 * t for t in r["truth"]], [-v if by_loss else 100 * v for v in r["scores"]], "o",
                    markersize=4, label=f"{r['source']} (tau {r['tau']:.2f})")
        ax.set_xlabel("retrained top-1 on natural test (%)")
        ax.set_ylabel("proxy held-out loss (lower ranks higher)" if by_loss else "proxy held-out accuracy (%)")
        ax.legend(fontsize=7)
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
                column = "val_acc" if any(r.get("val_acc") for r in epochs) else "train_acc"
                scored = [r for r in epochs if r.get(column)]  # ProxylessNAS: held-out scores every eval_updates
                if scored:
                    ax.plot([int(r["epoch"]) for r in scored], [float(r[column]) for r in scored], marker=".",
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


# The workflow's rules in the order they run, for the job-time table.
RULE_ORDER = ("data", "teacher", "teacher_eval", "synthesize", "merge", "soft_labels", "natural_reference",
              "synthesis_quality", "search", "random_architecture", "ranking", "supernet_test", "retrain", "fidelity",
              "student")


def job_stage(path: Path) -> str:
    """The stage a benchmark file of ``benchmarks/`` times: its rule, with the algorithm or space
    where the rule runs per algorithm (``search/darts_full_seed0.tsv`` -> ``search darts``)."""
    rule, stem = (path.parent.name, path.stem) if path.parent.name != "benchmarks" else (path.stem, "")
    first = stem.split("_")[0]
    if rule == "fidelity":
        return f"fidelity {'truth' if '_retrain' in stem else 'proxy'} {first}"
    return f"{rule} {first}" if rule in ("search", "retrain", "random_architecture", "student") else rule


def benchmark_files(run_dir: Path) -> list[Path]:
    """Snakemake's benchmark file of every finished job of the run but the report's own."""
    bench = run_dir / "benchmarks"
    return [p for p in sorted(bench.rglob("*.tsv")) if p != bench / "report.tsv"]


def benchmark_rows(run_dir: Path) -> pd.DataFrame:
    """Every finished job's benchmark row (`benchmark_files`), read once: its stage (`job_stage`),
    wall seconds ``s``, ``cpu_time``, ``max_rss`` and ``end`` (the file's modification time: each is
    written as its job ends). Snakemake's "-" for an unmeasured value reads as NaN."""
    frames = []
    for path in benchmark_files(run_dir):
        try:
            frame = pd.read_csv(path, sep="\t")
        except (OSError, ValueError):  # a benchmark being written or damaged: no reason to fail the report
            continue
        if {"s", "max_rss", "cpu_time"} <= set(frame.columns) and len(frame):
            frames.append(frame.assign(stage=job_stage(path), end=path.stat().st_mtime))
    if not frames:
        return pd.DataFrame(columns=["stage", "s", "max_rss", "cpu_time", "end"])
    jobs = pd.concat(frames, ignore_index=True)
    for column in ("s", "max_rss", "cpu_time"):
        jobs[column] = pd.to_numeric(jobs[column], errors="coerce")
    return jobs


def wall_clock(run_dir: Path) -> float:
    """Seconds from the first timed job's start (its end less its seconds) to the last one's end; 0
    without any."""
    jobs = benchmark_rows(run_dir).dropna(subset=["s"])
    return float(jobs.end.max() - (jobs.end - jobs.s).min()) if len(jobs) else 0.0


def job_times(run_dir: Path) -> pd.DataFrame:
    """One row per stage timed under ``run_dir/benchmarks`` (Snakemake's benchmark files): jobs, mean
    and total wall seconds, total CPU seconds and the largest peak memory (MiB). Empty without any."""
    jobs = benchmark_rows(run_dir)
    if not len(jobs):
        return pd.DataFrame(columns=["stage", "jobs", "mean_s", "total_min", "cpu_min", "max_rss_mib"])
    rank = {rule: i for i, rule in enumerate(RULE_ORDER)}
    jobs["order"] = jobs.stage.map(lambda stage: rank.get(stage.split()[0], len(rank)))
    jobs = jobs.sort_values(["order", "stage"], kind="stable")
    table = jobs.groupby("stage", sort=False).agg(jobs=("s", "size"), mean_s=("s", "mean"), total_s=("s", "sum"),
                                                  cpu_s=("cpu_time", "sum"), max_rss_mib=("max_rss", "max"))
    table = table.assign(total_min=table.total_s / 60, cpu_min=table.cpu_s / 60).reset_index()
    return table[["stage", "jobs", "mean_s", "total_min", "cpu_min", "max_rss_mib"]].round(
        {"mean_s": 1, "total_min": 1, "cpu_min": 1, "max_rss_mib": 0})


def job_times_markdown(table: pd.DataFrame) -> str:
    rows = ["| stage | jobs | mean wall (s) | total wall (min) | total CPU (min) | peak memory (MiB) |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {r.stage} | {r.jobs} | {r.mean_s:.1f} | {r.total_min:.1f} | {r.cpu_min:.1f} | {r.max_rss_mib:.0f} |"
             for r in table.itertuples()]
    total = table.total_min.sum()
    return "\n".join(rows) + f"\n\nAll jobs together: {total:.1f} minutes of wall time ({table.jobs.sum()} jobs).\n"


def job_times_text(run_dir: Path, table: pd.DataFrame) -> str:
    """The job-time table and the run's wall clock against the sum of its jobs' times."""
    wall, total = wall_clock(run_dir) / 60, table.total_min.sum()
    return (job_times_markdown(table) + f"From the first job's start to the last one's end: {wall:.1f} minutes"
            + (f" ({wall / total:.2f} of the jobs' sum: below 1, jobs ran side by side).\n" if total else ".\n"))


def make_report(cfg: dict, run_dir: Path, out_dir: Path, log=print) -> dict:
    search_cfg, rcfg = cfg["search"], cfg["report"]
    layout = Layout.of(run_dir)
    records = collect(layout, cfg)
    qualities = {v: read_json(layout.quality(v), *NEEDED) for v in cfg["synthesis"]["variants"]}
    rankings = {("spos", source, seed): read_json(layout.ranking(source, seed), *NEEDED)
                for source, seed in ranked(cfg)}
    fidelity = fidelity_rows(layout, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {}
    for algorithm in search_cfg["algorithms"]:
        rows = arm_rows(records, algorithm, rcfg["near_chance"])
        tables[algorithm] = rows
        write_csv(out_dir / f"{algorithm}.csv", rows)
        write_text(out_dir / f"{algorithm}.md", f"## {NAMES.get(algorithm, algorithm)}\n\n" + markdown_table(rows))
    sentences = [summary_sentence(records, a, rows, rankings) for a, rows in tables.items()]
    goals = goal_lines(records, cfg, tables, fidelity, qualities)
    quality_lines = [
        f"| {v} | {100 * q['teacher_agreement_round0']:.1f}% | "
        + ", ".join(f"{r['target_entropy']:.2f}" for r in q["rounds"])
        + f" | {q.get('student', {}).get('data_efficiency', math.nan):.3f} |" for v, q in qualities.items()]
    text = (f"# dfnas report: run {cfg['run']}\n\n" + "\n\n".join(sentences) + "\n\n"
            + "Intervals are 95% confidence intervals over seeds (Student t); differences are paired by seed.\n\n"
            + ("## Against the goals\n\n" + "\n".join(goals) + "\n\n" if goals else "")
            + "".join(f"## {NAMES.get(a, a)}\n\n{markdown_table(rows)}\n" for a, rows in tables.items())
            + "## Synthetic data\n\n| variant | teacher agreement (round 0) | target entropy per round (nats) "
              "| student data efficiency |\n|---|---|---|---|\n" + "\n".join(quality_lines) + "\n")
    if fidelity:
        table = fidelity_markdown(fidelity, rcfg["top_fraction"])
        write_text(out_dir / "fidelity.md", "## Fidelity\n\n" + table)
        write_csv(out_dir / "fidelity.csv", [{k: v for k, v in r.items() if k not in ("scores", "truth")}
                                             for r in fidelity])
        text += (f"\n## Fidelity\n\n{cfg['fidelity']['architectures']} architectures per space, each trained "
                 f"{fidelity[0]['steps']} steps on every source and ranked by held-out "
                 f"{'loss' if cfg['fidelity']['score'] == 'loss' else 'accuracy'}, against their "
                 f"top-1 after the retrain recipe; intervals: percentile bootstrap over the architectures "
                 f"({rcfg['bootstrap']} resamples).\n\n" + table)
    students = student_rows(layout, cfg)
    if students:
        write_csv(out_dir / "students.csv", students)
        text += ("\n## Data-free students\n\nEach architecture searched on "
                 f"`{cfg['student']['variant']}`, trained by distillation on that variant alone (no natural "
                 "training image); teacher agreement on its held-out synthetic images, top-1 on the natural "
                 "test split where it was scored.\n\n" + student_markdown(students))
    if rankings:
        text += ("\n## SPOS ranking check\n\n| source | seed | paths | Kendall tau |\n|---|---|---|---|\n"
                 + "\n".join(f"| {src} | {seed} | {len(r['paths'])} | "
                             + ("n/a" if r["kendall_tau"] is None else f"{r['kendall_tau']:.3f}") + " |"
                             for (_, src, seed), r in rankings.items()) + "\n")
    times = job_times(run_dir)
    if len(times):
        write_text(out_dir / "jobs.csv", times.to_csv(index=False))
        text += ("\n## Where the time went\n\nSnakemake's benchmark of every job that has finished (the "
                 "report's own excluded): wall and CPU time, peak resident memory.\n\n" + job_times_text(run_dir, times))
    write_text(out_dir / "summary.md", text)
    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    plot_accuracy(tables, figures / "accuracy.png")
    plot_search_curves(layout, search_cfg, figures / "search_curves.png")
    plot_entropy(qualities, figures / "soft_label_entropy.png")
    if fidelity:
        plot_fidelity(fidelity, figures / "fidelity.png")
    for sentence in sentences:
        log(sentence)
    return {"tables": tables, "summary": sentences, "goals": goals, "fidelity": fidelity, "students": students}


@cli_main
def main(argv=None):
    parser = stage_parser("report", __doc__, threads=False)
    parser.add_argument("--run-dir", required=True, help="results/<run>: the outputs of the workflow")
    parser.add_argument("--out-dir", required=True, help="where the tables, summary and figures go")
    args = parser.parse_args(argv)
    make_report(stage_config(args), Path(args.run_dir), Path(args.out_dir))


if __name__ == "__main__":
    main()
