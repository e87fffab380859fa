"""The report stage: tables, summary and figures from a run's files, numbers checked by hand."""

import csv
import json

import pytest

from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.report import make_report

TOP1 = {  # (source, seed) -> top-1
    ("natural", 0): 0.80, ("natural", 1): 0.82,
    ("full", 0): 0.79, ("full", 1): 0.815,
    ("random", 0): 0.75, ("random", 1): 0.77,
}


def fake_run(run_dir, algorithms=("darts",), seeds=(0, 1)):
    for algorithm in algorithms:
        for (source, seed), top1 in TOP1.items():
            if seed not in seeds:
                continue
            arm = f"{algorithm}/{source}/seed{seed}"
            (run_dir / "retrain" / arm).mkdir(parents=True)
            (run_dir / "search" / arm).mkdir(parents=True)
            (run_dir / "retrain" / arm / "metrics.json").write_text(json.dumps({
                "top1": top1, "top5": 0.99, "parameters": 1000 + 100 * seed, "multiply_adds": 2_000_000 * (seed + 1),
                "train_seconds": 10.0}))
            (run_dir / "search" / arm / "architecture.json").write_text(json.dumps({
                "space": algorithm, "choices": {}, "found_by": {
                    "search_seconds": 0.0 if source == "random" else 60.0 + seed,
                    "data_images": 0 if source == "random" else 520,
                    "weight_updates": 0 if source == "random" else 1000 * (seed + 1)}}))
            epochs = [] if source == "random" else [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6}]
            with open(run_dir / "search" / arm / "history.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=["epoch", "val_acc"])
                writer.writeheader()
                writer.writerows(epochs)
    (run_dir / "synthesis" / "full").mkdir(parents=True)
    (run_dir / "synthesis" / "full" / "quality.json").write_text(json.dumps({
        "teacher_agreement_round0": 0.995, "rounds": [{"round": 0, "target_entropy": 0.5},
                                                       {"round": 1, "target_entropy": 1.5}],
        "student": {"data_efficiency": 0.85}}))


def report_config(**search):
    return validate_config({"run": "t", "synthesis": {"variants": ["full"]},
                            "search": {"sources": ["natural", "full", "random"], "seeds": [0, 1], **search}})


def test_tables_and_summary_by_hand(tmp_path):
    fake_run(tmp_path)
    result = make_report(report_config(), tmp_path, tmp_path / "report", log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "report" / "darts.csv")))
    assert [r["source"] for r in rows] == ["natural", "full", "random"]
    natural, full, random = rows
    # natural: mean of 80 and 82 = 81, sample std = sqrt(2) = 1.4142
    assert float(natural["top1_mean"]) == pytest.approx(81.0)
    assert float(natural["top1_std"]) == pytest.approx(2**0.5, abs=1e-4)
    assert float(full["top1_mean"]) == pytest.approx(80.25)
    assert float(full["top1_std"]) == pytest.approx(1.7678, abs=1e-4)  # |81.5 - 79| / sqrt(2)
    assert int(natural["parameters"]) == 1050 and int(natural["multiply_adds"]) == 3_000_000
    assert float(natural["search_seconds"]) == pytest.approx(60.5) and natural["data"] == "520 natural images"
    assert full["data"] == "520 synthetic images" and random["data"] == "none"
    md = (tmp_path / "report" / "darts.md").read_text()
    assert "| natural data | 81.00 ± 1.41 | 2 | 1,050 | 3.00M | 60 s | 1,500 | 520 natural images |" in md
    assert int(natural["weight_updates"]) == 1500 and int(random["weight_updates"]) == 0
    # per-seed differences full - natural: -1.0 and -0.5 -> mean -0.75, std 0.3536
    sentence = result["summary"][0]
    assert sentence.startswith("DARTS: the architecture searched on synthetic data (full) reaches 80.25 ± 1.77% top-1")
    assert "-0.75 points (± 0.35 over 2 seeds)" in sentence and "a random architecture reaches 76.00 ± 1.41%" in sentence
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert sentence in summary and "| full | 99.5% | 0.50, 1.50 | 0.850 |" in summary
    for figure in ("accuracy", "search_curves", "soft_label_entropy"):
        assert (tmp_path / "report" / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"


def test_one_seed_has_no_spread(tmp_path):
    fake_run(tmp_path, seeds=(0,))
    result = make_report(report_config(seeds=[0]), tmp_path, tmp_path / "report", log=lambda *_: None)
    assert "reaches 79.00% top-1 against 80.00% when searched on natural data, -1.00 points (one seed, no spread)" \
        in result["summary"][0]
    assert list(csv.DictReader(open(tmp_path / "report" / "darts.csv")))[0]["top1_std"] == ""


def test_a_missing_arm_is_named(tmp_path):
    fake_run(tmp_path, seeds=(0,))
    with pytest.raises(DfnasError, match=r"the report needs .*retrain/darts/natural/seed1/metrics.json"):
        make_report(report_config(), tmp_path, tmp_path / "report", log=lambda *_: None)
