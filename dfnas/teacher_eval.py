"""The teacher's accuracy on the natural test split, to JSON.

    python -m dfnas.teacher_eval --config config.yaml --teacher results/default/teacher/teacher.pt \\
        --out results/default/teacher/eval.json
"""

from __future__ import annotations

import time
from pathlib import Path

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.data import dataset_from_config
from dfnas.errors import DfnasError
from dfnas.runtime import read_json, resolve_device, versions, write_json
from dfnas.teacher import check_teacher, dataset_label, load_teacher
from dfnas.train import evaluate


def evaluate_teacher(cfg: dict, teacher_path, log=print) -> dict:
    device = resolve_device(cfg["device"])
    data = dataset_from_config(cfg)
    teacher = load_teacher(teacher_path)
    if teacher.meta.get("dataset") != data.info.name:
        raise DfnasError(f"{teacher_path}: teacher was made for {teacher.meta.get('dataset')} but data.name is {data.info.name}")
    check_teacher(teacher.model, data.info.num_classes, data.info.input_shape, teacher.meta["normalization"],
                  dataset_label(data.summary()))
    t0 = time.time()
    scores = evaluate(teacher.model, data.test, device, teacher.mean, teacher.std, cfg["data"]["eval_batch_size"],
                      cfg["data"]["workers"])
    seconds = time.time() - t0
    sidecar = Path(teacher_path).with_suffix(".json")
    train_seconds = None
    if sidecar.is_file():
        train_seconds = read_json(sidecar, "teacher_eval").get("train_seconds")
    result = {
        "dataset": data.info.name,
        "split": "test",
        "top1": scores["top1"],
        "top5": scores["top5"],
        "loss": scores["loss"],
        "images": scores["n"],
        "teacher_source": teacher.meta["source"],
        "teacher_arch": teacher.meta["arch"],
        "teacher_parameters": teacher.meta["parameters"],
        "teacher_sha256": teacher.checksum,
        "teacher_train_seconds": train_seconds,
        "eval_seconds": seconds,
        "device": str(device),
        "versions": versions(),
    }
    log(f"teacher top-1 {scores['top1']:.4f} (top-5 {scores['top5']:.4f}) on {scores['n']} {data.info.name} test images")
    return result


@cli_main
def main(argv=None):
    parser = stage_parser("teacher_eval", __doc__, teacher="teacher file written by python -m dfnas.teacher")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    write_json(args.out, evaluate_teacher(cfg, args.teacher))


if __name__ == "__main__":
    main()
