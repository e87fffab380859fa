"""dfnas as an installed package: the wheel carries its schema and default config and runs a stage
from a directory that has nothing of the checkout."""

import json
import os
import shutil
import subprocess
import sys

import yaml

from conftest import REPO


def test_the_wheel_runs_a_stage_outside_the_checkout(tmp_path, fake_fmnist):
    source, wheels, site, scratch = (tmp_path / name for name in ("source", "wheels", "site", "scratch"))
    scratch.mkdir()
    # Built from a copy of the sources: a build/ folder left in the checkout would be reused.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "results", "resources", ".snakemake", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("dfnas-*.whl")
    installed = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert sorted(p.name for p in (site / "dfnas" / "defaults").iterdir()) == ["config.schema.yaml", "config.yaml"]

    # The installed copy, not the checkout (the dependencies come from this interpreter's site).
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", "import dfnas.config as c; print(c.__file__); "
                            "print(c.SCHEMA_PATH); print(c.load_config()['run'])"],
                           cwd=scratch, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    module, schema, run = probe.stdout.split()
    assert module.startswith(str(site)) and schema.startswith(str(site)) and run == "default"

    cfg = scratch / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"root": str(fake_fmnist), "subset": {"train": 50}}}))
    stage = subprocess.run([sys.executable, "-m", "dfnas.data", "--config", "c.yaml", "--out", "dataset.json"],
                           cwd=scratch, env=env, capture_output=True, text=True, timeout=300)
    assert stage.returncode == 0, stage.stderr
    info = json.loads((scratch / "dataset.json").read_text())
    assert (info["name"], info["train_size"], info["test_size"]) == ("fashion_mnist", 50, 100)
