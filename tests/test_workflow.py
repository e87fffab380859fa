"""The Snakemake workflow: presets plan, bad configs stop before any job, the smoke preset runs."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO

PRESETS = [REPO / "config.yaml", *sorted((REPO / "config").glob("*.yaml"))]


def snakemake(*args, cwd, timeout=900):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(cwd), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def planned_jobs(output: str) -> dict:
    """The job-count table that ``snakemake -n`` prints."""
    jobs, table = {}, False
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            table = True
        elif table and parts[:1] == ["total"]:
            break
        elif table and len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_dry_run_of_every_preset(preset, tmp_path):
    result = snakemake("-n", "--configfile", str(preset), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert planned_jobs(result.stdout) == {"data": 1, "teacher": 1, "teacher_eval": 1, "all": 1}


def test_bad_config_stops_before_any_job(tmp_path):
    result = snakemake("--cores", "1", "--configfile", str(REPO / "config/smoke.yaml"),
                       "--config", "seed=-3", cwd=tmp_path)
    assert result.returncode != 0
    assert "config key 'seed': -3 is less than the minimum of 0" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path):
    result = snakemake("--cores", "2", "--configfile", str(REPO / "config/smoke.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "results" / "smoke"

    dataset = json.loads((out / "data" / "dataset.json").read_text())
    assert dataset["name"] == "fashion_mnist"
    assert (dataset["train_size"], dataset["test_size"]) == (2000, 500)
    assert dataset["subset"] == {"train": 2000, "test": 500}

    meta = json.loads((out / "teacher" / "teacher.json").read_text())
    assert meta["arch_kwargs"] == {"depth": 8, "width": 8, "num_classes": 10, "in_channels": 1}
    assert len(meta["train"]["history"]) == 3

    metrics = json.loads((out / "teacher" / "eval.json").read_text())
    assert metrics["images"] == 500
    assert metrics["top1"] == pytest.approx(meta["train"]["test_top1"])
    assert metrics["top1"] > 0.5  # 10 classes: chance is 0.1
    assert metrics["teacher_sha256"] == meta["weights_sha256"]

    obj = torch.load(out / "teacher" / "teacher.pt", weights_only=True)
    assert obj["format"] == "dfnas-teacher" and "fc.weight" in obj["state_dict"]
    assert "epoch 3/3" in (out / "logs" / "teacher.log").read_text()
    assert (out / "benchmarks" / "teacher.tsv").read_text().startswith("s\t")

    again = snakemake("--cores", "2", "--configfile", str(REPO / "config/smoke.yaml"), cwd=tmp_path)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
