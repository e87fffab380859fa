"""The report stage: tables, summary and figures from a run's files, numbers checked by hand."""

import csv
import json
import math

import pytest

from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.report import make_report

TOP1 = {  # (source, seed) -> top-1
    ("natural", 0): 0.80, ("natural", 1): 0.82,
    ("full", 0): 0.79, ("full", 1): 0.815,
    ("random", 0): 0.75, ("random", 1): 0.77,
}

HELDOUT = {("natural", 0): 0.70, ("natural", 1): 0.80, ("full", 0): 0.60, ("full", 1): 0.12}
SUPERNET_TEST = {("natural", 0): 0.71, ("natural", 1): 0.73, ("full", 0): 0.55, ("full", 1): 0.15}


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
                    "weight_updates": 0 if source == "random" else 1000 * (seed + 1),
                    **({} if source == "random" else {"heldout_acc": HELDOUT[source, seed], "chance": 0.1})}}))
            if source != "random":
                (run_dir / "search" / arm / "supernet_test.json").write_text(json.dumps({
                    "test_top1": SUPERNET_TEST[source, seed], "test_images": 2000}))
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
    # natural: 80 and 82 -> mean 81, sd sqrt(2), 95% half-width t(0.975, 1) * sd / sqrt(2) = 12.706
    assert float(natural["top1_mean"]) == pytest.approx(81.0)
    assert float(natural["top1_ci95"]) == pytest.approx(12.706, abs=1e-3)
    # full: 79 and 81.5 -> mean 80.25, sd 1.7678, half-width 12.706 * 1.7678 / 1.4142 = 15.883
    assert float(full["top1_mean"]) == pytest.approx(80.25)
    assert float(full["top1_ci95"]) == pytest.approx(15.883, abs=1e-3)
    # paired full - natural per seed: -1.0 and -0.5 -> mean -0.75, half-width 12.706 * 0.35355 / 1.4142 = 3.1765
    assert float(full["minus_natural_mean"]) == pytest.approx(-0.75)
    assert float(full["minus_natural_ci95"]) == pytest.approx(3.1765, abs=1e-3)
    assert natural["minus_natural_mean"] == ""
    # held-out accuracy in percent; full seed 1 (12% with chance 10%) stayed near chance
    assert float(natural["heldout_acc_mean"]) == pytest.approx(75.0) and natural["near_chance_seeds"] == ""
    assert full["near_chance_seeds"] == "1" and random["heldout_acc_mean"] == ""
    # the search networks on natural test images: 71 and 73 -> 72 +- 12.706; 55 and 15 -> 35 +- 254.1
    assert float(natural["supernet_test_mean"]) == pytest.approx(72.0)
    assert float(natural["supernet_test_ci95"]) == pytest.approx(12.706, abs=1e-2)
    assert float(full["supernet_test_mean"]) == pytest.approx(35.0) and random["supernet_test_mean"] == ""
    assert int(natural["parameters"]) == 1050 and int(natural["multiply_adds"]) == 3_000_000
    assert float(natural["search_seconds"]) == pytest.approx(60.5) and natural["data"] == "520 natural images"
    assert full["data"] == "520 synthetic images" and random["data"] == "none"
    md = (tmp_path / "report" / "darts.md").read_text()
    assert ("| natural data | 81.00 ± 12.71 |  | 75.0 ± 63.5 | 72.0 ± 12.7 | 2 | 1,050 | 3.00M | 60 s | 1,500 | "
            "520 natural images |") in md
    assert ("| synthetic data (full) | 80.25 ± 15.88 | -0.75 ± 3.18 | 36.0 ± 304.9 (near chance: seed 1) | "
            "35.0 ± 254.1 |") in md
    assert "| random architecture | 76.00 ± 12.71 | -5.00 ± 0.00 |  |  | 2 |" in md
    assert int(natural["weight_updates"]) == 1500 and int(random["weight_updates"]) == 0
    sentence = result["summary"][0]
    # full - natural: [-3.93, 2.43]; full - random: 4.0 and 4.5 -> [1.07, 7.43]
    assert sentence.startswith("DARTS (2 seeds): searched on synthetic data (full) 80.25 ± 15.88% top-1, on natural "
                               "data 81.00 ± 12.71%; synthetic minus natural is indistinguishable within 3.93 points")
    assert "against a random architecture (76.00 ± 12.71%) synthetic is better by 1.07 to 7.43 points" in sentence
    assert "; the search networks on natural test images: natural 72.0 ± 12.7%, full 35.0 ± 254.1%" in sentence
    assert "Near chance, so their pick is a random pick: full (seed 1)" in sentence
    assert result["goals"] == [
        "- DARTS, search on full within 0.5 points of natural data or better: missed (95% interval of full minus "
        "natural: -3.93 to +2.43 points)",
        "- DARTS, search on full above a random architecture: met (95% interval of full minus random: +1.07 to "
        "+7.43 points)",
        "- `full` data efficiency at least 0.9 and above every ablation: missed (full 0.850)"]
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert sentence in summary and "| full | 99.5% | 0.50, 1.50 | 0.850 |" in summary
    for figure in ("accuracy", "search_curves", "soft_label_entropy"):
        assert (tmp_path / "report" / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"


def test_without_the_supernet_test_the_column_stays_empty(tmp_path):
    fake_run(tmp_path)
    for path in tmp_path.glob("search/*/*/*/supernet_test.json"):
        path.unlink()
    make_report(report_config(supernet_test={"images": 0}), tmp_path, tmp_path / "report", log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "report" / "darts.csv")))
    assert [r["supernet_test_mean"] for r in rows] == ["", "", ""]
    assert float(rows[0]["heldout_acc_mean"]) == pytest.approx(75.0)
    # With the stage on, a missing file is named.
    with pytest.raises(DfnasError, match="supernet_test.json"):
        make_report(report_config(), tmp_path, tmp_path / "report2", log=lambda *_: None)


def test_one_seed_has_no_interval(tmp_path):
    fake_run(tmp_path, seeds=(0,))
    result = make_report(report_config(seeds=[0]), tmp_path, tmp_path / "report", log=lambda *_: None)
    assert ("searched on synthetic data (full) 79.00% top-1, on natural data 80.00%; synthetic minus natural is "
            "-1.00 points from one seed (no interval)") in result["summary"][0]
    assert list(csv.DictReader(open(tmp_path / "report" / "darts.csv")))[0]["top1_ci95"] == ""
    assert all(g.endswith("not testable with one seed") for g in result["goals"][:2])


def fake_fidelity(run_dir, truth, proxies, losses=None):
    """Proxy scores per source: held-out accuracies, and losses (default: 2 - accuracy, the same order).
    ``truth[i]``: architecture i's retrained top-1, or a list of them (one per repeat)."""
    for i, top1 in enumerate(truth):
        for r, value in enumerate(top1 if isinstance(top1, list) else [top1]):
            path = run_dir / "fidelity" / "darts" / "retrain" / f"arch{i}_repeat{r}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"top1": value}))
    for source, scores in proxies.items():
        loss = (losses or {}).get(source) or [2 - v for v in scores]
        (run_dir / "fidelity" / "darts" / f"proxy_{source}.json").write_text(json.dumps({
            "scores": [{"index": i, "val_acc": v, "val_loss": l} for i, (v, l) in enumerate(zip(scores, loss))],
            "heldout_images": 100, "steps": 50}))


def test_fidelity_table_by_hand(tmp_path):
    fake_run(tmp_path)
    truth = [0.70, 0.72, 0.74, 0.76, 0.78, 0.80, 0.82, 0.84]
    proxies = {"natural": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],      # the same order: tau 1
               "full": [0.2, 0.1, 0.3, 0.4, 0.5, 0.6, 0.8, 0.7],         # two swapped pairs
               "noise": [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]}        # reversed: tau -1
    fake_fidelity(tmp_path, truth, proxies)
    cfg = report_config()
    cfg["synthesis"]["variants"] = ["full", "noise"]
    (tmp_path / "synthesis" / "noise").mkdir()
    (tmp_path / "synthesis" / "noise" / "quality.json").write_text(json.dumps({
        "teacher_agreement_round0": 0.1, "rounds": [{"round": 0, "target_entropy": 0.0}],
        "student": {"data_efficiency": 0.2}}))
    cfg["fidelity"] = {**cfg["fidelity"], "architectures": 8}
    result = make_report(cfg, tmp_path, tmp_path / "report", log=lambda *_: None)
    rows = {r["source"]: r for r in result["fidelity"]}
    assert list(rows) == ["natural", "full", "noise"]
    assert rows["natural"]["tau"] == 1.0 and rows["noise"]["tau"] == -1.0
    # full: 28 pairs, 2 discordant -> (26 - 2) / 28
    assert rows["full"]["tau"] == pytest.approx(24 / 28)
    # top quarter (2 of 8) by truth: items 6, 7; full's top two are 6 and 7 as well; noise's are 0, 1
    assert rows["full"]["top_overlap"] == 1.0 and rows["noise"]["top_overlap"] == 0.0
    assert rows["natural"]["tau_low"] == rows["natural"]["tau_high"] == 1.0  # every resample agrees
    assert rows["full"]["tau_low"] <= rows["full"]["tau"] <= rows["full"]["tau_high"] <= 1.0
    assert ("- DARTS fidelity, `noise` clearly last (its interval below every other source's tau-b): met"
            in result["goals"])
    assert "- DARTS fidelity, `full` ranks architectures best of the synthetic sets (Kendall tau-b): met" \
        in " ".join(result["goals"])
    table = (tmp_path / "report" / "fidelity.md").read_text()
    assert "| DARTS | natural | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] | 45.0% | 100 |" in table
    assert ("DARTS truth: top-1 after the retrain recipe, the mean of 1 retrain(s) per architecture; the 8 "
            "architectures span 14.00 points.") in table
    assert (tmp_path / "report" / "figures" / "fidelity.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["source"] for r in csv.DictReader(open(tmp_path / "report" / "fidelity.csv"))] == list(rows)
    # A proxy file that misses an architecture is named.
    fake_fidelity(tmp_path, truth, {"full": proxies["full"][:7]})
    with pytest.raises(DfnasError, match=r"proxy_full.json: scores for architectures .* expected 0..7"):
        make_report(cfg, tmp_path, tmp_path / "report", log=lambda *_: None)


def test_fidelity_truth_is_the_mean_of_its_repeats(tmp_path):
    """With ``truth_repeats: 2`` each architecture's truth is the mean of its two retrains: one
    retrain alone ranks the architectures in reverse of the proxy, their means in its order; the
    pooled standard deviation is reported."""
    fake_run(tmp_path)
    # Repeat 0 alone falls with the index, the means rise (0.70, 0.71, 0.72, 0.73).
    truth = [[0.76, 0.64], [0.75, 0.67], [0.74, 0.70], [0.73, 0.73]]
    fake_fidelity(tmp_path, truth, {"natural": [0.1, 0.2, 0.3, 0.4]})
    cfg = report_config()
    cfg["fidelity"] = {**cfg["fidelity"], "architectures": 4, "truth_repeats": 2, "sources": ["natural"]}
    row = make_report(cfg, tmp_path, tmp_path / "report", log=lambda *_: None)["fidelity"][0]
    assert row["tau"] == 1.0 and row["truth"] == pytest.approx([0.70, 0.71, 0.72, 0.73])
    # Per architecture the two retrains differ by d: variance d^2 / 2; d = 12, 8, 4, 0 points.
    assert row["truth_sd"] == pytest.approx(((144 + 64 + 16 + 0) / 2 / 4) ** 0.5)
    assert row["truth_span"] == pytest.approx(3.0)
    assert "the mean of 2 retrain(s) per architecture; the 4 architectures span 3.00 points; one retrain's " \
        "standard deviation 5.29 points" in (tmp_path / "report" / "fidelity.md").read_text()
    cfg["fidelity"]["truth_repeats"] = 3  # a repeat that was never retrained is named
    with pytest.raises(DfnasError, match=r"arch0_repeat2.json"):
        make_report(cfg, tmp_path, tmp_path / "report", log=lambda *_: None)


def test_fidelity_ranks_by_the_configured_score(tmp_path):
    """Near chance, held-out accuracies tie while the losses still order the architectures: the loss
    (the default) ranks, accuracy gives no ranking; a loss order against the truth gives tau -1."""
    fake_run(tmp_path)
    truth = [0.70, 0.72, 0.74, 0.76, 0.78, 0.80, 0.82, 0.84]
    tied = [0.1] * 8
    fake_fidelity(tmp_path, truth, {"natural": tied, "full": tied},
                  losses={"natural": [2.30 - 0.01 * i for i in range(8)],   # lower loss, higher truth
                          "full": [2.20 + 0.01 * i for i in range(8)]})     # the reverse
    cfg = report_config()
    cfg["fidelity"] = {**cfg["fidelity"], "architectures": 8}
    by_loss = {r["source"]: r for r in make_report(cfg, tmp_path, tmp_path / "report", log=lambda *_: None)["fidelity"]}
    assert by_loss["natural"]["tau"] == 1.0 and by_loss["full"]["tau"] == -1.0
    assert by_loss["natural"]["score"] == "loss" and by_loss["natural"]["proxy_mean_acc"] == pytest.approx(0.1)
    assert "ranked by held-out loss" in (tmp_path / "report" / "summary.md").read_text()
    cfg["fidelity"]["score"] = "accuracy"
    by_acc = {r["source"]: r for r in make_report(cfg, tmp_path, tmp_path / "report", log=lambda *_: None)["fidelity"]}
    assert math.isnan(by_acc["natural"]["tau"]) and math.isnan(by_acc["full"]["tau"])
    assert "ranked by held-out accuracy" in (tmp_path / "report" / "summary.md").read_text()


def test_a_missing_arm_is_named(tmp_path):
    fake_run(tmp_path, seeds=(0,))
    with pytest.raises(DfnasError, match=r"the report needs .*retrain/darts/natural/seed1/metrics.json"):
        make_report(report_config(), tmp_path, tmp_path / "report", log=lambda *_: None)


def test_student_table(tmp_path):
    fake_run(tmp_path)
    for seed, (agreement, top1) in enumerate([(0.9, 0.71), (0.8, None)]):
        folder = tmp_path / "student" / "darts" / "full" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "teacher_agreement": agreement, **({"top1": top1} if top1 is not None else {}),
            "synthetic_training_images": 540, "parameters": 5000 + seed, "multiply_adds": 3_500_000,
            "train_seconds": 12.34}))
    cfg = validate_config({**report_config(), "student": {"variant": "full"}})
    result = make_report(cfg, tmp_path, tmp_path / "report", log=lambda *_: None)
    assert [(r["seed"], r["teacher_agreement"], r["top1"]) for r in result["students"]] == [(0, 90.0, 71.0),
                                                                                           (1, 80.0, None)]
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "## Data-free students" in summary
    assert "| DARTS | 0 | 90.00 | 71.00 | 5,000 | 3.50M | 540 |" in summary
    assert "| DARTS | 1 | 80.00 | not scored | 5,001 | 3.50M | 540 |" in summary
    rows = list(csv.DictReader(open(tmp_path / "report" / "students.csv")))
    assert [r["top1"] for r in rows] == ["71.0", ""]


def test_job_times_by_hand(tmp_path):
    """Snakemake's benchmark files, grouped by stage and algorithm in the workflow's order: counts,
    means and totals by hand; the report's own benchmark and an unreadable one are left out."""
    fake_run(tmp_path)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    bench = tmp_path / "benchmarks"
    for name, seconds, rss, cpu in [("search/darts_full_seed0", 100.0, 900.5, 95.0),
                                    ("search/darts_natural_seed1", 140.0, "-", 130.0),
                                    ("search/spos_full_seed0", 30.0, 500.0, 29.0),
                                    ("teacher", 600.0, 700.0, 1150.0),
                                    ("fidelity/spos_retrain3", 24.0, 650.0, 23.0),
                                    ("fidelity/spos_natural", 90.0, 640.0, 88.0),
                                    ("report", 5.0, 90.0, 4.0)]:
        (bench / name).parent.mkdir(parents=True, exist_ok=True)
        (bench / f"{name}.tsv").write_text(header + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t90\t{cpu}\n")
    (bench / "merge").mkdir()
    (bench / "merge" / "full.tsv").write_bytes(b"\xff\xfe not a table")
    make_report(report_config(), tmp_path, tmp_path / "report", log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "report" / "jobs.csv")))
    assert [r["stage"] for r in rows] == ["teacher", "search darts", "search spos", "fidelity proxy spos",
                                          "fidelity truth spos"]
    darts = rows[1]
    assert (darts["jobs"], float(darts["mean_s"]), float(darts["total_min"]), float(darts["cpu_min"])) == (
        "2", 120.0, 4.0, 3.8)  # (100 + 140) / 2 s; 240 s; 225 s of CPU = 3.75 -> 3.8 min
    assert float(darts["max_rss_mib"]) == 900.0  # 900.5 rounded; the unmeasured "-" ignored
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| teacher | 1 | 600.0 | 10.0 | 19.2 | 700 |" in summary
    assert "All jobs together: 16.4 minutes of wall time (6 jobs)." in summary  # 984 s


def test_search_curves_plot_the_epochs_that_were_scored(tmp_path, monkeypatch):
    """A ProxylessNAS history scored every few epochs (``eval_updates``) has empty held-out cells in
    the others: the curve is drawn through the scored epochs alone."""
    import matplotlib.axes

    from dfnas import report
    from dfnas.layout import Layout

    layout = Layout("run", str(tmp_path))
    path = tmp_path / "run" / "search" / "proxyless" / "natural" / "seed0" / "history.csv"
    assert layout.history("proxyless", "natural", 0) == str(path)
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["epoch", "train_acc", "val_acc"])
        writer.writeheader()
        writer.writerows([{"epoch": 1, "train_acc": 0.2, "val_acc": ""}, {"epoch": 2, "train_acc": 0.3, "val_acc": 0.25},
                          {"epoch": 3, "train_acc": 0.4, "val_acc": ""}, {"epoch": 4, "train_acc": 0.5, "val_acc": 0.45}])
    drawn = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, x, y, **k: drawn.append((x, y)) or real(ax, x, y, **k))
    report.plot_search_curves(layout, {"algorithms": ["proxyless"], "sources": ["natural"], "seeds": [0]},
                              tmp_path / "curves.png")
    assert drawn == [([2, 4], [0.25, 0.45])] and (tmp_path / "curves.png").stat().st_size > 0
