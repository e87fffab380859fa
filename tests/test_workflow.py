"""The Snakemake workflow: presets plan, bad configs stop before any job, the smoke preset runs."""

import csv
import json
import re
import subprocess
import sys

import h5py
import pytest
import torch
import yaml

from conftest import REPO, planned_jobs
from dfnas.config import load_config

PRESETS = [REPO / "config.yaml", *sorted((REPO / "config").glob("*.yaml"))]


def snakemake(*args, cwd, timeout=900):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(cwd), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def planned_inputs(output: str) -> dict:
    """rule name -> list of the input lists of its planned jobs, from ``snakemake -n`` output."""
    inputs, rule = {}, None
    for line in output.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif rule and line.strip().startswith("input:"):
            inputs.setdefault(rule, []).append(line.split(":", 1)[1].strip())
    return inputs


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_dry_run_of_every_preset(preset, tmp_path):
    cfg = load_config(preset)
    variants, shards = len(cfg["synthesis"]["variants"]), cfg["synthesis"]["shards"]
    result = snakemake("-n", "--configfile", str(preset), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    s = cfg["search"]
    arms = len(s["algorithms"]) * len(s["sources"]) * len(s["seeds"])
    randoms = len(s["algorithms"]) * len(s["seeds"]) if "random" in s["sources"] else 0
    synthetic = len(set(s["sources"]) - {"natural", "random"})
    ranked = synthetic * len(s["seeds"]) if "spos" in s["algorithms"] and s["spos"]["ranking"]["paths"] else 0
    f = cfg["fidelity"]
    spaces = len(f["algorithms"] or s["algorithms"]) if f["architectures"] else 0
    fidelity_sources = len(f["sources"] or ["natural", *cfg["synthesis"]["variants"]])
    expected = {
        "data": 1, "teacher": 1, "teacher_eval": 1, "synthesize": variants * shards, "merge": variants,
        "soft_labels": variants, "synthesis_quality": variants, "natural_reference": 1, "search": arms - randoms,
        "random_architecture": randoms, "retrain": arms, "ranking": ranked, "report": 1, "all": 1,
        "supernet_test": arms - randoms if s["supernet_test"]["images"] else 0,
        "fidelity_draw": spaces, "fidelity_proxy": spaces * fidelity_sources,
        "fidelity_truth": spaces * f["architectures"] * f["truth_repeats"],
        "student": len(s["algorithms"]) * len(s["seeds"]) if cfg["student"]["variant"] else 0,
    }
    assert planned_jobs(result.stdout) == {k: v for k, v in expected.items() if v}
    # The synthetic branch takes no natural-data input: only the teacher and its own files.
    inputs = planned_inputs(result.stdout)
    for rule in ("synthesize", "merge", "soft_labels"):
        assert len(inputs[rule]) == (variants * shards if rule == "synthesize" else variants)
        for listed in inputs[rule]:
            assert "/data/" not in listed and "teacher/teacher.pt" in listed, (rule, listed)
    assert all("data/dataset.json" in listed for listed in inputs["synthesis_quality"])
    synthetic_searches = [listed for listed in inputs["search"] if "synthesis/" in listed]
    per_source = len(s["algorithms"]) * len(s["seeds"])
    assert len(synthetic_searches) == per_source * len(set(s["sources"]) - {"natural", "random"})
    assert all("/data/" not in listed and "soft_labels.h5" in listed for listed in synthetic_searches)
    # The ranking check is an evaluation: it takes the supernet, the synthetic set and natural data.
    for listed in inputs.get("ranking", []):
        assert "search_network.pt" in listed and "soft_labels.h5" in listed and "data/dataset.json" in listed
    # So is the supernet test: every search network, with its own data and natural data.
    tested = inputs.get("supernet_test", [])
    assert len([x for x in tested if "soft_labels.h5" in x]) == len(synthetic_searches)
    assert all("search_network.pt" in x and "architecture.json" in x and "data/dataset.json" in x for x in tested)


def planned_commands(output: str) -> list[str]:
    """The shell commands of a ``snakemake -n -p`` plan, sorted."""
    prefix = "Shell command: "
    return sorted(line.strip()[len(prefix):] for line in output.splitlines() if line.strip().startswith(prefix))


# The embedded default, a preset with a relative data folder and a paper preset: every preset goes
# through the same loading code (Snakefile), so three cover it at a third of the planning time.
PLANNED_FROM_ELSEWHERE = [REPO / "config.yaml", REPO / "config" / "smoke-folder.yaml",
                          REPO / "config" / "paper-imagenet.yaml"]


@pytest.mark.parametrize("preset", PLANNED_FROM_ELSEWHERE, ids=lambda p: p.name)
def test_a_preset_plans_the_same_commands_from_any_directory(preset, tmp_path):
    """A working directory holding a config.yaml (the checkout) and an empty one plan the same."""
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    checkout.mkdir()
    elsewhere.mkdir()
    (checkout / "config.yaml").write_text((REPO / "config.yaml").read_text().replace("seed: 0", "seed: 7"))
    plans = [snakemake("-n", "-p", "--configfile", str(preset), cwd=cwd) for cwd in (checkout, elsewhere)]
    assert all(p.returncode == 0 for p in plans), plans[0].stderr[-2000:] + plans[1].stderr[-2000:]
    commands = [planned_commands(p.stdout) for p in plans]
    assert commands[0] and commands[0] == commands[1]
    # Without --configfile the embedded default is the config: the same plan as naming it.
    if preset == REPO / "config.yaml":
        default = snakemake("-n", "-p", cwd=elsewhere)
        assert planned_commands(default.stdout) == commands[1]


# Job counts of the paper-scale presets, written out by hand from their configs.
PRESET_JOBS = {
    # 5 variants x 10 shards; DARTS x 5 data sources x 4 seeds, 4 random baselines; 24 retrains
    "paper-cifar10.yaml": {"synthesize": 50, "merge": 5, "search": 20, "random_architecture": 4, "retrain": 24},
    # 4 variants x 20 shards; (SPOS, ProxylessNAS) x 5 sources x 1 seed; SPOS ranking per synthetic source
    "paper-imagenet.yaml": {"synthesize": 80, "merge": 4, "search": 10, "random_architecture": 2, "retrain": 12,
                            "ranking": 4},
    # 5 variants x 2 shards; 3 algorithms x 2 sources x 3 seeds; 3 x 3 random; full x 3 seeds ranked;
    # fidelity: the SPOS space x (natural + 5 variants), 12 architectures retrained 3 times each
    "fmnist-study.yaml": {"synthesize": 10, "merge": 5, "search": 18, "random_architecture": 9, "retrain": 27,
                          "ranking": 3, "fidelity_draw": 1, "fidelity_proxy": 6, "fidelity_truth": 36},
}


@pytest.mark.parametrize("name", sorted(PRESET_JOBS))
def test_paper_presets_plan_the_expected_jobs(name, tmp_path):
    result = snakemake("-n", "--configfile", str(REPO / "config" / name), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = planned_jobs(result.stdout)
    assert {k: jobs.get(k, 0) for k in PRESET_JOBS[name]} == PRESET_JOBS[name]
    assert jobs["teacher"] == jobs["report"] == jobs["natural_reference"] == 1


def test_dfnas_as_a_module_of_another_workflow(tmp_path):
    """`module dfnas: snakefile: ...` + `use rule * from dfnas`: the host plans the smoke DAG with the
    same commands as dfnas run directly."""
    host, direct = tmp_path / "host", tmp_path / "direct"
    host.mkdir()
    direct.mkdir()
    (host / "Snakefile").write_text(f"""\
configfile: "{REPO / 'config' / 'smoke.yaml'}"

module dfnas:
    snakefile: "{REPO / 'Snakefile'}"
    config: config

use rule * from dfnas as dfnas_*

rule host_all:
    default_target: True
    input: rules.dfnas_all.input
""")
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(host / "Snakefile"), "--directory", str(host)]
    hosted = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert hosted.returncode == 0, hosted.stderr[-3000:]
    plain = snakemake("-n", "-p", "--configfile", str(REPO / "config/smoke.yaml"), cwd=direct)
    assert plain.returncode == 0, plain.stderr[-3000:]
    jobs = planned_jobs(plain.stdout)
    assert planned_jobs(hosted.stdout) == {**{f"dfnas_{rule}": n for rule, n in jobs.items() if rule != "all"},
                                           "host_all": 1}
    assert planned_commands(hosted.stdout) == planned_commands(plain.stdout) != []


def test_jobs_on_several_gpus_are_torchrun_jobs(tmp_path):
    """retrain.gpus: 2 plans every retrain and fidelity truth, search.spos.gpus: 3 every SPOS search,
    search.darts.gpus: 2 every DARTS search, under torchrun with that many ranks, and asks Snakemake
    (and so SLURM) for that many GPUs; ProxylessNAS at gpus 1 stays single-process on one GPU;
    device: cpu with several GPUs is refused before any job."""
    cfg = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    cfg["retrain"] = {**cfg.get("retrain", {}), "gpus": 2}
    cfg["search"]["spos"] = {**cfg["search"].get("spos", {}), "gpus": 3}
    cfg["search"]["darts"] = {**cfg["search"].get("darts", {}), "gpus": 2}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**cfg, "device": "auto"}))
    result = snakemake("-n", "-p", "--configfile", str(tmp_path / "c.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    retrains = [c for c in lines if "-m dfnas.retrain" in c]
    assert retrains and all("python -m torch.distributed.run --standalone --nproc_per_node 2 -m dfnas.retrain" in c
                            for c in retrains)
    searches = [c for c in lines if "-m dfnas.search" in c and "--source random" not in c]
    spos = [c for c in searches if "--algorithm spos" in c]
    assert spos and all("--nproc_per_node 3 -m dfnas.search" in c for c in spos)
    darts = [c for c in searches if "--algorithm darts" in c]
    assert darts and all("--nproc_per_node 2 -m dfnas.search" in c for c in darts)
    others = [c for c in searches if c not in spos + darts]
    assert others and all("torch.distributed.run" not in c for c in others)
    resources = re.findall(r"^rule (\w+):\n(?:    (?!resources).*\n)*    resources: .*?gpu=(\d+)", result.stdout, re.M)
    assert {("retrain", "2"), ("search", "3"), ("search", "2"), ("search", "1")} <= set(resources)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**cfg, "device": "cpu"}))
    refused = snakemake("-n", "--configfile", str(tmp_path / "c.yaml"), cwd=tmp_path)
    assert refused.returncode != 0
    assert "config key 'retrain.gpus': 2 GPUs per job need device auto or cuda, not 'cpu'" in refused.stderr + refused.stdout


def test_bad_config_stops_before_any_job(tmp_path):
    result = snakemake("--cores", "1", "--configfile", str(REPO / "config/smoke.yaml"),
                       "--config", "seed=-3", cwd=tmp_path)
    assert result.returncode != 0
    assert "config key 'seed': -3 is less than the minimum of 0" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()
    # A key given twice in a config file: Snakemake's reading would keep the last one.
    twice = tmp_path / "twice.yaml"
    twice.write_text((REPO / "config/smoke.yaml").read_text() + "\nseed: 3\nseed: 4\n")
    result = snakemake("--cores", "1", "--configfile", str(twice), cwd=tmp_path)
    assert result.returncode != 0 and not (tmp_path / "results").exists()
    assert "twice.yaml line" in result.stderr and "not valid YAML (key 'seed' given twice)" in result.stderr


def test_workflow_is_lint_clean_and_snakefmt_formatted(tmp_path):
    lint = snakemake("--lint", cwd=tmp_path)
    assert lint.returncode == 0 and "your workflow is in a good condition" in lint.stdout + lint.stderr, \
        lint.stdout[-3000:] + lint.stderr[-3000:]
    files = [str(REPO / "Snakefile"), *map(str, sorted((REPO / "workflow" / "rules").glob("*.smk")))]
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_nested_config_values_on_the_command_line_are_numbers(tmp_path):
    """Snakemake passes `synthesis={shards: 1}` on as text; dfnas reads it as the integer it is."""
    result = snakemake("-n", "--configfile", str(REPO / "config/smoke.yaml"), "--config", "synthesis={shards: 1}",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result.stdout)["synthesize"] == 2  # smoke's 2 variants x 1 shard


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

    # Synthesis: 2 variants x 2 shards x 2 rounds x 20 images, merged with 1 val image per class.
    for variant in ("full", "noise"):
        syn = out / "synthesis" / variant
        with h5py.File(syn / "dataset.h5") as f:
            assert f.attrs["variant"] == variant and f.attrs["teacher_sha256"] == meta["weights_sha256"]
            assert f["train/images"].shape[0] + f["val/images"].shape[0] == 40
            assert f["val/labels"].shape[0] <= 10
            assert sorted(set(f["train/round"][...].tolist())) == [0, 1]
        with h5py.File(syn / "soft_labels.h5") as f:
            assert f["train/logits"].shape[1:] == (3, 10) and f["val/logits"].shape[1:] == (1, 10)
        q = json.loads((syn / "quality.json").read_text())
        assert q["variant"] == variant and q["images"] == 40
        assert [r["round"] for r in q["rounds"]] == [0, 1]
        assert 0 <= q["student"]["synthetic_top1"] <= 1 and q["student"]["recipe"]["steps"] == 20
        assert not list(syn.glob("*.partial"))
    for source in ("natural", "full", "random"):
        found = out / "search" / "darts" / source / "seed0"
        arch = json.loads((found / "architecture.json").read_text())
        assert arch["space"] == "darts" and arch["found_by"]["source"] == source
        assert len(arch["choices"]["normal"]) == 8 and len(arch["choices"]["reduce"]) == 8
        epochs = 0 if source == "random" else 2
        assert len((found / "history.csv").read_text().strip().splitlines()) == 1 + epochs
        assert (found / "architecture.png").read_bytes()[:4] == b"\x89PNG"
        assert not (found / "checkpoint.pt").exists()
        metrics = json.loads((out / "retrain" / "darts" / source / "seed0" / "metrics.json").read_text())
        assert metrics["choices"] == arch["choices"] and metrics["found_by"]["source"] == source
        assert metrics["train_images"] == 200 and metrics["test_images"] == 500
        assert 0 <= metrics["top1"] <= 1 and metrics["parameters"] > 0 and metrics["multiply_adds"] > 0
        spos = json.loads((out / "retrain" / "spos" / source / "seed0" / "metrics.json").read_text())
        assert spos["space"] == "spos" and len(spos["choices"]["path"]) == 3
        assert (out / "search" / "spos" / source / "seed0" / "search_network.pt").exists() == (source != "random")
        proxyless = json.loads((out / "retrain" / "proxyless" / source / "seed0" / "metrics.json").read_text())
        assert proxyless["space"] == "proxyless" and len(proxyless["choices"]["ops"]) == 3
    ranking = json.loads((out / "search" / "spos" / "full" / "seed0" / "ranking.json").read_text())
    assert len(ranking["paths"]) == 4 and ranking["natural_images"] == 40
    assert ranking["kendall_tau"] is None or -1 <= ranking["kendall_tau"] <= 1  # None: a constant score vector
    full = json.loads((out / "synthesis" / "full" / "quality.json").read_text())
    # Round 1 is optimized for the teacher's soft outputs, so its targets carry entropy; round 0's are one-hot.
    assert full["rounds"][0]["target_entropy"] == 0 and full["rounds"][1]["target_entropy"] > 0

    # The report: one table per algorithm with the three arms, the summary, the HTML report.
    for algorithm in ("darts", "spos", "proxyless"):
        rows = list(csv.DictReader(open(out / "report" / f"{algorithm}.csv")))
        assert [r["source"] for r in rows] == ["natural", "full", "random"]
        retrained = json.loads((out / "retrain" / algorithm / "full" / "seed0" / "metrics.json").read_text())
        assert float(rows[1]["top1_mean"]) == pytest.approx(100 * retrained["top1"], abs=1e-4)
    summary = (out / "report" / "summary.md").read_text()
    assert summary.count("searched on synthetic data (full) ") == 3 and "Kendall tau" in summary
    assert "## Against the goals" in summary and "not testable with one seed" in summary
    for algorithm in ("darts", "spos", "proxyless"):
        arch = json.loads((out / "search" / algorithm / "full" / "seed0" / "architecture.json").read_text())
        assert 0 <= arch["found_by"]["heldout_acc"] <= 1 and arch["found_by"]["chance"] == 0.1
    # Every search network scored on natural test images, its held-out figure rescored as the search had it.
    for algorithm in ("darts", "spos", "proxyless"):
        for source in ("natural", "full"):
            tested = json.loads((out / "search" / algorithm / source / "seed0" / "supernet_test.json").read_text())
            assert 0 <= tested["test_top1"] <= 1 and tested["test_images"] == 500, (algorithm, source)
            if algorithm != "spos":
                assert tested["heldout_acc_rescored"] == pytest.approx(tested["heldout_acc"], abs=1e-9)
        rows = list(csv.DictReader(open(out / "report" / f"{algorithm}.csv")))
        assert [r["supernet_test_mean"] != "" for r in rows] == [True, True, False]  # natural, full, random
    # The data-free student of each search on `full`: no natural training image, a program that loads.
    for algorithm in ("darts", "spos", "proxyless"):
        folder = out / "student" / algorithm / "full" / "seed0"
        student = json.loads((folder / "metrics.json").read_text())
        assert student["natural_training_images"] == 0 and student["synthetic_training_images"] == 30
        assert len(student["history"]) == 2 and 0 <= student["top1"] <= 1 and student["test_images"] == 500
        program = torch.export.load(folder / "student.pt2").module()
        assert program(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert len(list(csv.DictReader(open(out / "report" / "students.csv")))) == 3
    # The fidelity stage: 4 SPOS architectures, scored on natural data and on `full`, and retrained.
    archs = json.loads((out / "fidelity" / "spos" / "architectures.json").read_text())
    assert len(archs) == 4
    for source in ("natural", "full"):
        proxy = json.loads((out / "fidelity" / "spos" / f"proxy_{source}.json").read_text())
        assert [r["index"] for r in proxy["scores"]] == [0, 1, 2, 3] and proxy["steps"] == 6
    truth = [json.loads((out / "fidelity" / "spos" / "retrain" / f"arch{k}_repeat0.json").read_text()) for k in range(4)]
    assert [t["choices"] for t in truth] == [a["choices"] for a in archs]
    fidelity = list(csv.DictReader(open(out / "report" / "fidelity.csv")))
    assert [(r["space"], r["source"]) for r in fidelity] == [("spos", "natural"), ("spos", "full")]
    assert (out / "report" / "figures" / "fidelity.png").read_bytes()[:4] == b"\x89PNG"
    html = snakemake("--configfile", str(REPO / "config/smoke.yaml"), "--report", "report.html", cwd=tmp_path)
    assert html.returncode == 0, html.stderr[-2000:]
    page = (tmp_path / "report.html").read_text()
    assert all(name in page for name in ("summary.md", "accuracy.png", "ranking.png", "samples.png", "darts.md"))

    again = snakemake("--cores", "2", "--configfile", str(REPO / "config/smoke.yaml"), cwd=tmp_path)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # One search key changed: only the searches of that algorithm (not its random baseline, which
    # reads no training keys), their retrains, its student and the report are planned again.
    changed = tmp_path / "changed.yaml"
    text = (REPO / "config/smoke.yaml").read_text()
    assert "darts: {cells: 3, channels: 4, epochs: 2, batch_size: 10}" in text
    changed.write_text(text.replace("darts: {cells: 3, channels: 4, epochs: 2, batch_size: 10}",
                                    "darts: {cells: 3, channels: 4, epochs: 3, batch_size: 10}"))
    plan = snakemake("-n", "--configfile", str(changed), cwd=tmp_path)
    assert planned_jobs(plan.stdout) == {"search": 2, "supernet_test": 2, "retrain": 2, "student": 1, "report": 1,
                                         "all": 1}
    assert "search/darts/natural/seed0" in plan.stdout and "search/darts/full/seed0" in plan.stdout

    # Growing a finished run plans only the new jobs (and the report, which aggregates them all):
    # no finished shard, merge, search, random baseline, ranking or retrain runs again.
    base = (REPO / "config/smoke.yaml").read_text()
    grown = {
        "a variant": (("variants: [full, noise]", "variants: [full, noise, deepinversion]"),
                      {"synthesize": 2, "merge": 1, "soft_labels": 1, "synthesis_quality": 1}),
        "a source": (("sources: [natural, full, random]", "sources: [natural, full, noise, random]"),
                     {"search": 3, "supernet_test": 3, "retrain": 3, "ranking": 1}),
        "a seed": (("algorithms: [darts, spos, proxyless]", "algorithms: [darts, spos, proxyless]\n  seeds: [0, 1]"),
                   {"search": 6, "supernet_test": 6, "random_architecture": 3, "retrain": 9, "ranking": 1,
                    "student": 3}),
        "an algorithm less": (("algorithms: [darts, spos, proxyless]", "algorithms: [darts, spos]"), {}),
    }
    for what, ((old, new), jobs) in grown.items():
        assert old in base, what
        changed.write_text(base.replace(old, new))
        plan = snakemake("-n", "--configfile", str(changed), cwd=tmp_path)
        assert plan.returncode == 0, plan.stderr[-2000:]
        assert planned_jobs(plan.stdout) == {**jobs, "report": 1, "all": 1}, what


def test_search_source_must_be_a_synthesized_variant(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((REPO / "config/smoke.yaml").read_text().replace(
        "sources: [natural, full, random]", "sources: [natural, no_regional]"))
    result = snakemake("-n", "--configfile", str(cfg), cwd=tmp_path)
    assert result.returncode != 0
    assert "config key 'search.sources': 'no_regional' is not in synthesis.variants" in result.stderr + result.stdout


@pytest.mark.slow
def test_smoke_folder_preset_end_to_end(tmp_path):
    """paper-imagenet's code paths at CI size: a folder of real JPEG files (10 classes, 30 + 10 images
    each, 64 to 83 px) streamed through a DataLoader worker, uint8 shards, top-k soft labels with
    lighting, the ImageNet-stem SPOS and ProxylessNAS spaces, the ranking check, retrain, report."""
    from PIL import Image

    from dfnas.example_data import write_image_folder

    write_image_folder(tmp_path / "resources" / "data" / "smoke-folder", classes=10, train_per_class=30,
                       test_per_class=10, size=64)
    result = snakemake("--cores", "2", "--configfile", str(REPO / "config/smoke-folder.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "results" / "smoke-folder"

    dataset = json.loads((out / "data" / "dataset.json").read_text())
    assert dataset["name"] == "folder" and dataset["class_names"][3] == "class_003"
    assert dataset["input_shape"] == [3, 48, 48] and (dataset["train_size"], dataset["test_size"]) == (300, 100)
    # Normalization measured on the images: every channel's mean and spread, not the defaults.
    assert all(0.3 < m < 0.7 for m in dataset["mean"]) and all(0.15 < s < 0.4 for s in dataset["std"])
    teacher_eval = json.loads((out / "teacher" / "eval.json").read_text())
    assert teacher_eval["images"] == 100 and teacher_eval["top1"] > 0.5  # colour classes: chance is 0.1

    with h5py.File(out / "synthesis" / "full" / "dataset.h5") as f:
        assert f["train/images"].dtype == "uint8" and f["train/images"].shape[1:] == (3, 48, 48)
    with h5py.File(out / "synthesis" / "full" / "soft_labels.h5") as f:
        assert f["train/topk_probs"].shape[1:] == (3, 3) and f["train/lighting"].shape[1:] == (3, 3)
    width, height = Image.open(out / "synthesis" / "full" / "samples.png").size
    assert height == 18 + 10 * (48 * 2 + 2)  # 10 named class rows of 48-px images shown at 96 px

    for algorithm in ("spos", "proxyless"):
        for source in ("natural", "full", "random"):
            metrics = json.loads((out / "retrain" / algorithm / source / "seed0" / "metrics.json").read_text())
            assert metrics["test_images"] == 100 and 0 <= metrics["top1"] <= 1
    assert not (out / "search" / "darts").exists()
    spos = json.loads((out / "search" / "spos" / "natural" / "seed0" / "architecture.json").read_text())
    assert spos["found_by"]["data_images"] == 60
    ranking = json.loads((out / "search" / "spos" / "full" / "seed0" / "ranking.json").read_text())
    assert len(ranking["paths"]) == 4 and ranking["natural_images"] == 40
    assert (out / "report" / "summary.md").read_text().count("searched on synthetic data (full) ") == 2


def test_a_file_teacher_is_an_input_of_the_teacher_job(tmp_path):
    """Replacing a file: teacher remakes the teacher and all made from it: the file is the job's input
    (a missing one is named before any job runs)."""
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    cfg["teacher"]["source"] = "file:weights/my_teacher.pt"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    missing = snakemake("teacher", "-n", "--configfile", str(config), cwd=tmp_path)
    assert missing.returncode != 0 and "weights/my_teacher.pt" in missing.stdout + missing.stderr
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "my_teacher.pt").write_bytes(b"stand-in")
    plan = snakemake("teacher", "-n", "--configfile", str(config), cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    (teacher_inputs,) = planned_inputs(plan.stdout)["teacher"]
    assert "weights/my_teacher.pt" in teacher_inputs and "data/dataset.json" in teacher_inputs
