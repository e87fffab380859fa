"""Where a workflow run spends its time: per-stage seconds from Snakemake's benchmark files.

Every rule writes ``results/<run>/benchmarks/<rule>[/<job>].tsv`` (wall seconds, CPU seconds,
memory). This script prints the report's job-time table (`dfnas.report.job_times`: per stage and
algorithm, jobs, mean and total wall time, CPU time, peak memory), the run's wall-clock span (first
job start to last job end, from the files' times) and its ratio to a goal (20 minutes for the
embedded default on a 2-core CPU). The sum of job times exceeds the wall clock when jobs ran side
by side.

    python benchmarks/workflow_times.py [results/default] [--goal-minutes 20]
"""

import argparse
from pathlib import Path

from dfnas.report import job_times, job_times_text, wall_clock


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", default="results/default")
    parser.add_argument("--goal-minutes", type=float, default=20.0)
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    table = job_times(run_dir)
    if not len(table):
        raise SystemExit(f"no benchmark files under {run_dir / 'benchmarks'}: run the workflow first")
    print(job_times_text(run_dir, table))
    print(f"wall clock / goal of {args.goal_minutes:g} min: {wall_clock(run_dir) / (60 * args.goal_minutes):.2f}")


if __name__ == "__main__":
    main()
