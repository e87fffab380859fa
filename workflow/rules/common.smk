# Shared by the rules: the results layout and the config each job reads, both from the dfnas
# package (dfnas.layout, dfnas.jobs), which the report and the stages use too.

import os
import shlex
import sys

from snakemake.settings.types import DeploymentMethod

from dfnas.jobs import job_json
from dfnas.layout import (
    Layout,
    arms,
    fidelity_sources,
    fidelity_spaces,
    ranked,
    students,
    supernet_tested,
)

L = Layout(config["run"])
RESULTS = L.path()
# Relative to the rule files (Snakemake resolves a rule's conda file from the file that defines it),
# so that it is this checkout's environment also when dfnas is a module of another workflow.
ENV = "../../envs/dfnas.yaml"
VARIANTS = config["synthesis"]["variants"]
ALGORITHMS = config["search"]["algorithms"]
SOURCES = config["search"]["sources"]
SEEDS = config["search"]["seeds"]
ARMS = arms(config)
RANKED = ranked(config)
STUDENTS = students(config)
SUPERNET_TESTED = supernet_tested(config)
FIDELITY_SPACES = fidelity_spaces(config)
FIDELITY_SOURCES = fidelity_sources(config)
FIDELITY = [(space, source) for space in FIDELITY_SPACES for source in FIDELITY_SOURCES]
FIDELITY_TRUTH = [
    (space, k, r)
    for space in FIDELITY_SPACES
    for k in range(config["fidelity"]["architectures"])
    for r in range(config["fidelity"]["truth_repeats"])
]
SHARD_IDS = [f"{s:03d}" for s in range(config["synthesis"]["shards"])]
# GPUs a training job asks for (Snakemake's `gpu` resource; the SLURM profile turns it into
# sbatch --gpus): none when the config pins the CPU.
GPU = 0 if config["device"] == "cpu" else 1
# A job on several GPUs (retrain.gpus, search.<algorithm>.gpus) runs one rank per GPU under torchrun
# (dfnas.distributed).
RETRAIN_GPUS = GPU * config["retrain"]["gpus"]


def teacher_file_input():
    """A file: teacher's path, an input of the teacher rule: replacing the file remakes the teacher
    and all made from it (url: and torchvision: sources are checked by sha256)."""
    kind, _, value = config["teacher"]["source"].partition(":")
    return [value] if kind == "file" else []


def launcher(gpus):
    """How a job's Python starts: plain, or torchrun with one process per GPU."""
    if gpus <= 1:
        return "python"
    return f"python -m torch.distributed.run --standalone --nproc_per_node {gpus}"


RETRAIN_PYTHON = launcher(RETRAIN_GPUS)


def search_gpus(wildcards):
    """GPUs of a search job: search.<algorithm>.gpus."""
    return GPU * config["search"][wildcards.algorithm]["gpus"]


# Every job runs `python -m dfnas.<stage>`. Without conda, the interpreter that runs Snakemake comes
# first on PATH, so that `.venv/bin/snakemake` works without an activated virtualenv (`make setup`
# installs dfnas there). Under --use-conda, envs/dfnas.yaml holds the dependencies, and
# envs/dfnas.post-deploy.sh installs dfnas itself (editable) from the checkout named by DFNAS_DIR
# when Snakemake creates the environment. The jobs still put this checkout first on PYTHONPATH:
# checkouts that run with the same --conda-prefix share one environment (Snakemake names it by the
# environment files and that folder, not by the checkout), and a job must run the code this
# Snakefile plans with.
# Two malloc arenas per job: glibc's default (8 per core) lets a PyTorch process that reads batches
# from DataLoader workers fragment its heap by a few hundred MB over its first epochs.
JOB_PREFIX = "set -euo pipefail; export MALLOC_ARENA_MAX=${{MALLOC_ARENA_MAX:-2}}; "
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    # Set, not read, here: every Snakemake process that parses this file (and so may create the
    # environment) hands the checkout to the post-deploy script.
    os.environ.update(DFNAS_DIR=DFNAS_DIR)
    JOB_PREFIX += "export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; " % shlex.quote(
        DFNAS_DIR
    )
else:
    JOB_PREFIX += 'export PATH=%s:"$PATH"; ' % shlex.quote(
        os.path.dirname(sys.executable)
    )
shell.prefix(JOB_PREFIX)


def job_params(job):
    """The rule's --config-json: only the keys its job reads (dfnas.jobs), per wildcards."""
    return lambda wc: job_json(
        config,
        job,
        **{k: getattr(wc, k) for k in ("algorithm", "source") if hasattr(wc, k)},
    )


def search_inputs(wildcards):
    if wildcards.source == "natural":
        return {"natural": rules.data.output[0]}
    return {
        "dataset": L.dataset(wildcards.source),
        "labels": L.soft_labels(wildcards.source),
    }


def supernet_test_inputs(wildcards):
    """A search's data, and natural data (its test split) for every source."""
    return {**search_inputs(wildcards), "natural": rules.data.output[0]}


def search_data_args(wildcards, input):
    if wildcards.source == "natural":
        return ""
    return f"--dataset {input.dataset} --labels {input.labels}"

# Priorities (higher first among ready jobs): the synthetic branch is the long chain of a run, so
# the teacher and synthesis jump the queue, and the natural-data and random arms fill free cores.
