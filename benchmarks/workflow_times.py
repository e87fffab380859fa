"""Where a workflow run spends its time: per-rule seconds from Snakemake's benchmark files.

Every rule that trains or synthesizes writes ``results/<run>/benchmarks/<rule>/<job>.tsv`` (wall
seconds, memory). This script sums them per rule and prints each rule's share, the sum of job
times, the run's wall-clock span (first job start to last job end, from the files' times) and
its ratio to a goal (20 minutes for the embedded default on a 2-core CPU). The sum of job times
exceeds the wall clock when jobs ran side by side.

    python benchmarks/workflow_times.py [results/default] [--goal-minutes 20]
"""

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def read_seconds(path: Path) -> float:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return sum(float(r["s"]) for r in rows) / max(1, len(rows))  # mean over repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", default="results/default")
    parser.add_argument("--goal-minutes", type=float, default=20.0)
    args = parser.parse_args()
    bench = Path(args.run_dir) / "benchmarks"
    files = sorted(bench.rglob("*.tsv"))
    if not files:
        raise SystemExit(f"no benchmark files under {bench}: run the workflow first")
    per_rule, jobs = defaultdict(float), defaultdict(int)
    spans = []
    for f in files:
        rule = f.parent.name if f.parent != bench else f.stem
        seconds = read_seconds(f)
        per_rule[rule] += seconds
        jobs[rule] += 1
        end = f.stat().st_mtime
        spans.append((end - seconds, end))
    total = sum(per_rule.values())
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    print(f"{'rule':<22}{'jobs':>6}{'seconds':>10}{'share':>8}")
    for rule, seconds in sorted(per_rule.items(), key=lambda kv: -kv[1]):
        print(f"{rule:<22}{jobs[rule]:>6}{seconds:>10.1f}{seconds / total:>8.1%}")
    print(f"{'sum of job times':<28}{total:>10.1f} s  ({total / 60:.1f} min)")
    print(f"{'wall clock (first to last job)':<28}{wall:>10.1f} s  ({wall / 60:.1f} min)")
    print(f"wall clock / sum of job times: {wall / total:.2f}  (below 1: jobs ran side by side)")
    print(f"wall clock / goal of {args.goal_minutes:g} min: {wall / (60 * args.goal_minutes):.2f}")


if __name__ == "__main__":
    main()
