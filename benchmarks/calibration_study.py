"""Recursive label calibration, measured: which temperature and how many rounds.

For each calibration temperature T and seed, synthesizes the `full` variant of the embedded default
(its teacher, its synthesis settings, `--rounds` rounds in one shard) and measures per round the
entropy of the targets the round was optimized for, the teacher's agreement with their top class
(class evidence), and the data efficiency of the quality student distilled from the first r rounds
(its natural-test accuracy over that of the same student distilled from as many natural images).
Prints one Markdown table with the mean and 95% confidence interval over seeds.

    python benchmarks/calibration_study.py --temperatures 1 2 4 --seeds 0 1 2 --rounds 4 \\
        --work /tmp/calibration --out calibration.json

The teacher is trained once (the embedded default's stand-in, kept in --work); a second run reuses
every shard, reference student and measurement it finds there, so runs for different temperatures
can go side by side and a last run with all of them prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dfnas import shards as sh  # noqa: E402
from dfnas.config import load_config  # noqa: E402
from dfnas.data import dataset_from_config  # noqa: E402
from dfnas.merge import merge  # noqa: E402
from dfnas.runtime import resolve_device, set_threads, write_json  # noqa: E402
from dfnas.stats import format_ci, mean_ci  # noqa: E402
from dfnas.streaming import Rows  # noqa: E402
from dfnas.synthesis_quality import distill_student, natural_reference, round_statistics  # noqa: E402
from dfnas.synthesize import run_shard  # noqa: E402
from dfnas.teacher import dataset_info, load_teacher, make_teacher  # noqa: E402
from dfnas.train import evaluate  # noqa: E402


def quiet(*_):
    pass


def reference(cfg: dict, teacher, n_images: int, work: Path) -> float:
    """The natural reference student's top-1 for ``n_images`` and the seed (the same for every T), kept."""
    path = work / f"reference_{n_images}_seed{cfg['seed']}.json"
    if not path.exists():
        write_json(path, natural_reference(cfg, teacher, n_images, log=quiet))
    return json.loads(path.read_text())["top1"]


def measure(cfg: dict, teacher, work: Path, natural, device) -> dict:
    """Per-round statistics and data efficiency of the first r rounds, for one (T, seed)."""
    s = cfg["synthesis"]
    name = f"T{s['calibration']['temperature']:g}_seed{cfg['seed']}"
    done = work / f"{name}.json"
    if done.exists():
        kept = json.loads(done.read_text())
        kept["data_efficiency"] = {int(r): v for r, v in kept["data_efficiency"].items()}
        return kept
    shard = work / f"{name}.h5"
    if not shard.exists():
        run_shard(cfg, teacher, "full", 0, shard, log=quiet)
    dataset = work / f"{name}_dataset.h5"
    merge([shard], teacher.checksum, 0, cfg["seed"], dataset)
    split = sh.SyntheticSplit(dataset, "train")
    rounds = round_statistics(block for _, block in split.blocks(("teacher_logits", "targets", "round")))
    image_rounds = split.column("round")
    efficiency = {}
    for r in range(1, s["rounds"] + 1):
        keep = torch.from_numpy(np.flatnonzero(image_rounds < r))
        student = distill_student(teacher, Rows(split, keep), cfg["quality"], device, cfg["seed"],
                                  teacher.input_shape[0], quiet)
        syn = evaluate(student, natural.test, device, teacher.mean, teacher.std)["top1"]
        ref = reference(cfg, teacher, len(keep), work)
        efficiency[r] = syn / ref
    result = {"temperature": s["calibration"]["temperature"], "seed": cfg["seed"], "rounds": rounds,
              "data_efficiency": efficiency}
    write_json(done, result)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--work", default="calibration-study")
    parser.add_argument("--out", default=None, help="JSON of every measurement")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = load_config(Path(__file__).resolve().parent.parent / "config.yaml")
    base["device"] = "cpu"
    device = resolve_device("cpu")
    teacher_path = work / "teacher.pt"
    if not teacher_path.exists():
        make_teacher(base, dataset_info(base), teacher_path, log=print)
    teacher = load_teacher(teacher_path, device)
    natural = dataset_from_config(base)
    results = []
    for temperature in args.temperatures:
        for seed in args.seeds:
            cfg = json.loads(json.dumps(base))
            cfg["seed"] = seed
            cfg["synthesis"].update(shards=1, rounds=args.rounds)
            cfg["synthesis"]["calibration"]["temperature"] = temperature
            results.append(measure(cfg, teacher, work, natural, device))
            last = results[-1]
            print(f"T {temperature:g} seed {seed}: target entropy "
                  + " ".join(f"{r['target_entropy']:.2f}" for r in last["rounds"]) + ", agreement "
                  + " ".join(f"{r['teacher_agrees_with_target_class']:.2f}" for r in last["rounds"])
                  + ", data efficiency " + " ".join(f"{v:.3f}" for v in last["data_efficiency"].values()),
                  flush=True)
    if args.out:
        write_json(args.out, results)
    print(table(results, args.rounds))


def table(results: list[dict], rounds: int) -> str:
    """Markdown: per temperature, mean ± 95% CI over seeds."""
    head = (["T"] + [f"target entropy r{r}" for r in range(rounds)] + [f"agreement r{r}" for r in range(rounds)]
            + [f"data efficiency {r} round{'s' if r > 1 else ''}" for r in range(1, rounds + 1)])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for temperature in dict.fromkeys(r["temperature"] for r in results):
        runs = [r for r in results if r["temperature"] == temperature]
        cells = [f"{temperature:g}"]
        for key in ("target_entropy", "teacher_agrees_with_target_class"):
            cells += [format_ci(*mean_ci([run["rounds"][r][key] for run in runs])) for r in range(rounds)]
        cells += [format_ci(*mean_ci([run["data_efficiency"][r] for run in runs]), 3) for r in range(1, rounds + 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{len(results) // max(1, len(set(r['temperature'] for r in results)))} seeds per row"


if __name__ == "__main__":
    main()
