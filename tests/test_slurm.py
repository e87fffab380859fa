"""The SLURM profile on a real SLURM: a single-node cluster started by scripts/slurm-cluster.

The smoke preset, cut to one synthetic variant, one shard and the SPOS arm (every rule of the
smoke preset still runs, in half the jobs), on a small fake Fashion-MNIST, through
workflow/profiles/slurm-local. Every job must be an sbatch job of that cluster: submitted with a
SLURM job id, its log under .snakemake/slurm_logs/rule_<rule>/, COMPLETED in squeue.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, planned_jobs

SCRIPT = REPO / "scripts" / "slurm-cluster"
PROFILE = REPO / "workflow" / "profiles" / "slurm-local"
SMOKE = REPO / "config" / "smoke.yaml"
SLURM_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")

# Fewer jobs than the smoke preset, each rule still at least once.
OVERRIDES = {
    "synthesis": {"variants": ["full"], "shards": 1},
    "search": {"algorithms": ["spos"], "sources": ["full", "random"]},
    "fidelity": {"sources": ["full"]},
}


def why_no_slurm() -> str | None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install '.[slurm]')"
    if os.geteuid() != 0:
        return "not root: scripts/slurm-cluster starts munged, slurmctld and slurmd as root"
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [c for c in SLURM_COMMANDS if shutil.which(c, path=path) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing; as root: make slurm)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_no_slurm() is not None, reason=str(why_no_slurm()))]


def cluster(command: str, state, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "DFNAS_SLURM_DIR": str(state)}
    return subprocess.run([str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """A running single-node cluster; yields the environment that points SLURM commands at it."""
    state = tmp_path_factory.mktemp("slurm")
    try:
        started = cluster("start", state, timeout=300)
        assert started.returncode == 0, f"scripts/slurm-cluster start failed:\n{started.stdout}{started.stderr}"
        (export,) = [line for line in cluster("env", state).stdout.splitlines() if "SLURM_CONF=" in line]
        name, value = shlex.split(export)[-1].split("=", 1)
        yield {**os.environ, name: value}
    finally:
        stopped = cluster("stop", state, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert cluster("status", state).returncode != 0, "a daemon of the test cluster outlived stop"


def snakemake(*args, cwd, env, timeout):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(cwd), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_smoke_workflow_on_slurm(slurm_env, fake_fmnist, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    overrides = work / "overrides.yaml"
    overrides.write_text(yaml.safe_dump({**OVERRIDES, "data": {"root": str(fake_fmnist), "download": False}}))
    configs = ("--configfile", str(SMOKE), str(overrides))

    planned = snakemake("-n", "--configfile", str(SMOKE), cwd=work, env=slurm_env, timeout=300)
    assert planned.returncode == 0, planned.stderr[-3000:]
    smoke_rules = set(planned_jobs(planned.stdout)) - {"all"}

    result = snakemake(*configs, "--profile", str(PROFILE), "--slurm-keep-successful-logs",
                       cwd=work, env=slurm_env, timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]

    # Every job but the local rules (the target, and the data stage, which may download) went to
    # SLURM, once, with a job id of its own.
    stats = planned_jobs(out)
    assert stats["data"] == 1
    remote = {rule: n for rule, n in stats.items() if rule not in ("all", "data")}
    assert set(remote) | {"data"} == smoke_rules, \
        f"extend OVERRIDES so that every rule of the smoke preset runs: {smoke_rules - set(remote) - {'data'}}"
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", out)
    assert len(submitted) == sum(remote.values()), out[-5000:]
    ids = {jobid for jobid, _ in submitted}
    assert len(ids) == len(submitted)

    # The plugin's log layout: .snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<jobid>.log
    logs = work / ".snakemake" / "slurm_logs"
    for rule, n in remote.items():
        files = sorted((logs / f"rule_{rule}").rglob("*.log"))
        assert len(files) == n, (rule, files)
        for f in files:
            assert f.stem in ids, f
            text = f.read_text()
            assert f"rule {rule}:" in text and f"Finished jobid: 0 (Rule: {rule})" in text, f

    # And the cluster ran them all to completion.
    queue = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T"], env=slurm_env,
                           capture_output=True, text=True, timeout=60)
    assert queue.returncode == 0, queue.stderr
    states = dict(line.split("|") for line in queue.stdout.split())
    assert {jobid: states.get(jobid) for jobid in ids} == {jobid: "COMPLETED" for jobid in ids}

    # The targets of `rule all` exist.
    targets = re.search(r"localrule all:\n\s+input: (.+)\n", out)
    assert targets, out[-3000:]
    for path in targets.group(1).split(", "):
        assert (work / path).is_file(), path
    assert (work / "results" / "smoke" / "teacher" / "eval.json").is_file()
    assert not (logs / "rule_data").exists()  # ran where Snakemake runs
