# Shared helpers of the rules: where outputs go, how a rule hands its config to a module.

import json
import os
import sys

RESULTS = f"results/{config['run']}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
ENV = os.path.join(workflow.basedir, "envs", "dfnas.yaml")
# GPUs a training job asks for (Snakemake's `gpu` resource; the SLURM profile turns it into
# sbatch --gpus): none when the config pins the CPU.
GPU = 0 if config["device"] == "cpu" else 1

# Jobs import dfnas from this checkout, in a plain virtualenv and under --use-conda alike. Without
# conda, `python` in a rule is the interpreter that runs Snakemake (a virtualenv need not be active);
# with --use-conda, the activated environment comes first on PATH.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def stage_config(*sections):
    """The validated config a stage needs, as JSON for --config-json.

    Passing only these sections as a param means Snakemake reruns a job when, and only when, a
    key that the job reads has changed.
    """
    keys = ("seed", "device", "threads") + sections
    return json.dumps({k: config[k] for k in keys}, sort_keys=True, separators=(",", ":"))


# Priorities (higher first among ready jobs): the synthetic branch is the long chain of a run, so
# the teacher and synthesis jump the queue, and the natural-data and random arms fill free cores.
