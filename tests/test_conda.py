"""`snakemake --use-conda` end to end on a stand-in conda: Snakemake creates the rules' environment from
envs/dfnas.yaml, its post-deploy script installs dfnas (editable) from the checkout, and the jobs run
inside that environment on the code of the checkout that planned them, also when another checkout
created the environment.

No conda channel is reachable from the test machines, so the stand-in answers the conda commands
Snakemake issues (info, --version, config, env create) and builds an environment as a virtualenv that
sees this interpreter's packages but not dfnas. The environment file is still checked for what conda
would need: the dependency lists themselves are tested in test_dependencies.py."""

import json
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO

FAKE_CONDA = """\
#!{python}
import json, os, subprocess, sys
from pathlib import Path
import yaml

BASE = Path({base!r})
args = sys.argv[1:]
if args == ["info", "--json"]:
    print(json.dumps({{"conda_prefix": str(BASE), "platform": "linux-64"}}))
elif args == ["--version"]:
    print("conda 24.7.1")
elif args[:3] == ["config", "--get", "channel_priority"]:
    print(json.dumps({{"get": {{"channel_priority": "strict"}}, "rc_path": ""}}))
elif args[:1] == ["clean"]:
    pass  # no package cache to clean
elif args[:2] == ["env", "create"]:
    env_file = Path(args[args.index("--file") + 1])
    prefix = Path(args[args.index("--prefix") + 1])
    spec = yaml.safe_load(env_file.read_text())
    assert spec["dependencies"], "no dependencies"
    with open(BASE / "created.log", "a") as log:
        log.write(json.dumps({{"file": str(env_file), "prefix": str(prefix)}}) + "\\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    # The dependencies: this interpreter's packages (a path, so their .pth files, dfnas's editable
    # finder among them, are not run: dfnas is not importable until the post-deploy script installs it).
    (site_dir,) = prefix.glob("lib/python*/site-packages")
    (site_dir / "dependencies.pth").write_text("\\n".join({site_packages!r}) + "\\n")
else:
    sys.exit(f"stand-in conda: unexpected command {{args}}")
"""

ACTIVATE = """\
# Sourced by Snakemake as `source activate ENV` before a job or the post-deploy script.
echo "$1" >> {base}/activated.log
export PATH="$1/bin:$PATH"
"""


def checkout(target: Path) -> Path:
    """A copy of this checkout's workflow and package (what a user clones), without build leftovers."""
    shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "results", "resources", ".snakemake", "__pycache__",
        ".pytest_cache", "tests", "docs", "benchmarks"))
    return target


def fake_conda(base: Path) -> dict:
    """The stand-in conda's folder; returns the environment to run Snakemake in."""
    (base / "bin").mkdir(parents=True)
    conda = base / "bin" / "conda"
    conda.write_text(FAKE_CONDA.format(python=sys.executable, base=str(base),
                                       site_packages=site.getsitepackages()))
    conda.chmod(0o755)
    (base / "bin" / "activate").write_text(ACTIVATE.format(base=base))
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DFNAS_DIR")}
    env["PATH"] = f"{base / 'bin'}:{env['PATH']}"
    return env


def use_conda(snakefile: Path, workdir: Path, config: Path, prefix: Path, env: dict):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir),
         "--configfile", str(config), "--use-conda", "--conda-prefix", str(prefix), "--cores", "1", "data"],
        env=env, capture_output=True, text=True, timeout=600)


def in_env(prefix: Path, code: str, env: dict) -> str:
    (python,) = prefix.glob("*/bin/python")
    result = subprocess.run([str(python), "-c", code], env=env, cwd=prefix, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.slow
def test_use_conda_installs_dfnas_and_runs_the_jobs_in_the_environment(tmp_path, fake_fmnist):
    base, prefix = tmp_path / "conda", tmp_path / "envs"
    env = fake_conda(base)
    first, second = checkout(tmp_path / "first"), checkout(tmp_path / "second")
    config = tmp_path / "config.yaml"
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    smoke["data"].update(root=str(fake_fmnist), subset={"train": 60, "test": 40})
    config.write_text(yaml.safe_dump(smoke))

    run = use_conda(first / "Snakefile", tmp_path / "work1", config, prefix, env)
    assert run.returncode == 0, run.stderr[-4000:]
    info = json.loads((tmp_path / "work1" / "results" / "smoke" / "data" / "dataset.json").read_text())
    assert (info["train_size"], info["test_size"]) == (60, 40)

    # One environment, created from envs/dfnas.yaml (Snakemake copies it next to the environment).
    (created,) = [json.loads(line) for line in (base / "created.log").read_text().splitlines()]
    env_dir = Path(created["prefix"])
    assert env_dir.parent == prefix
    assert yaml.safe_load(Path(created["file"]).read_text()) == yaml.safe_load(
        (first / "envs" / "dfnas.yaml").read_text())
    # The post-deploy script ran in it, then the job: both activated it.
    assert (base / "activated.log").read_text().split() == [str(env_dir)] * 2
    assert "Running post-deploy script" in run.stderr

    # dfnas is installed in the environment, editable, from the first checkout, with its commands.
    located = in_env(prefix, "import dfnas, importlib.metadata as m; print(dfnas.__file__); "
                     "print(m.version('dfnas'))", env)
    assert located.splitlines() == [str(first / "dfnas" / "__init__.py"), "0.1.0"]
    help_text = subprocess.run([str(env_dir / "bin" / "dfnas-data"), "--help"], env=env, capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0 and "--config" in help_text.stdout, help_text.stderr

    # A second checkout with the same --conda-prefix reuses the environment, whose dfnas points at the
    # first checkout. With that checkout gone, the job still runs: on the second checkout's code.
    shutil.rmtree(first)
    run = use_conda(second / "Snakefile", tmp_path / "work2", config, prefix, env)
    assert run.returncode == 0, run.stderr[-4000:]
    assert len((base / "created.log").read_text().splitlines()) == 1
    assert (base / "activated.log").read_text().split() == [str(env_dir)] * 3
    assert json.loads((tmp_path / "work2" / "results" / "smoke" / "data" / "dataset.json").read_text()) == info


def test_the_post_deploy_script_refuses_without_a_checkout(tmp_path):
    script = REPO / "envs" / "dfnas.post-deploy.sh"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")  # Snakemake runs it with its shebang
    for dfnas_dir in ("", str(tmp_path)):
        result = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "DFNAS_DIR": dfnas_dir},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert result.stderr == textwrap.dedent(f"""\
            dfnas post-deploy: DFNAS_DIR='{dfnas_dir}' is not a dfnas checkout; create this environment \
through the dfnas Snakefile (snakemake --use-conda)
            """)
