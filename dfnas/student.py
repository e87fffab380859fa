"""The data-free student: a found architecture trained without any natural training image.

The architecture a search found on a synthetic variant is trained from scratch by distillation on
that variant alone: its synthetic training images and the teacher's cached soft labels (random
cached views, at ``search.temperature``, the search's own data path), SGD with a per-step cosine
learning rate (``student.*``), so that teacher -> synthesis -> search -> student uses no
natural training data. The student is scored by its agreement with the teacher (its top class equals the
teacher's) on the variant's held-out validation images and, with ``student.natural_test``, by
top-1 on the natural test split, which it never trains on.

Written to the output folder: ``metrics.json``, ``student.pt`` (state dict, architecture, network
sizes and input normalization, for dfnas) and ``student.pt2`` (the network as a ``torch.export``
program for any batch size: ``torch.export.load(path).module()`` runs it with torch alone, no
dfnas; it takes normalized images, see ``normalization`` in the metrics).
Checkpointed every epoch; a killed job resumes.

    python -m dfnas.student --config config.yaml --arch results/default/search/darts/full/seed0/architecture.json \\
        --dataset results/default/synthesis/full/dataset.h5 --labels results/default/synthesis/full/soft_labels.h5 \\
        --out-dir results/default/student/darts/full/seed0
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dfnas.checkpoint import Checkpoint
from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.data import dataset_from_config
from dfnas.errors import DfnasError
from dfnas.fidelity import network_sizes
from dfnas.flops import count_macs, count_parameters
from dfnas.optim import cosine_lr, decay_groups, set_lr
from dfnas.runtime import derived_seed, resolve_device, save_torch, seed_everything, versions, write_json
from dfnas.search_data import SearchData
from dfnas.spaces import build_architecture, read_architecture
from dfnas.train import evaluate


def export_program(model: torch.nn.Module, input_shape, path: Path, tolerance: float = 1e-5) -> None:
    """``model`` (in eval mode, on the CPU) exported with ``torch.export`` for any batch size and saved
    at ``path``; the saved program is loaded back and must give the model's outputs."""
    model = model.cpu().eval()
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    tmp = path.with_name(path.name + ".tmp")
    torch.export.save(program, tmp)
    check = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gap = (torch.export.load(tmp).module()(check) - model(check)).abs().max().item()
    if gap > tolerance:
        tmp.unlink(missing_ok=True)
        raise DfnasError(f"{path}: the exported student differs from the network by {gap:.2e} (over {tolerance:g})")
    tmp.replace(path)


def train_student(cfg: dict, arch_path, dataset, labels, out_dir, log=print) -> dict:
    arch = read_architecture(arch_path, "student")
    scfg = cfg["student"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    search_seed = arch.get("found_by", {}).get("seed", 0)
    seed = derived_seed(cfg["seed"], "student", search_seed) % (2**31)
    seed_everything(seed)
    device = resolve_device(cfg["device"])
    data = SearchData(cfg, scfg["variant"], seed, dataset, labels, train_portion=0.5, synthetic_holdout="val",
                      device=device)
    c, h, _ = data.input_shape
    sizes = network_sizes(cfg, arch["space"])
    model = build_architecture(arch, c, h, data.num_classes, sizes)
    params, macs = count_parameters(model), count_macs(model, data.input_shape)
    model.to(device).train()
    opt = torch.optim.SGD(decay_groups(model, scfg["weight_decay"]), lr=scfg["lr"], momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(seed)
    bs, epochs = scfg["batch_size"], scfg["epochs"]
    per_epoch = data.steps_per_epoch(0, bs)
    total = epochs * per_epoch
    stateful = {"model": model, "optimizer": opt}
    exact = {k: arch.get(k) for k in ("space", "space_args", "choices")}
    checkpoint = Checkpoint(out_dir / "checkpoint.pt", {"student": scfg, "arch": exact, "sizes": sizes,
                                                        **data.fingerprint(seed)}, log)
    resumed = checkpoint.resume(stateful, gen)
    history = resumed.history
    log(f"student {arch['space']} (searched on {scfg['variant']}, seed {search_seed}): {params:,} parameters, "
        f"{macs / 1e6:.1f}M multiply-adds, {len(data.halves[0])} synthetic images, {epochs} epochs of {per_epoch} "
        f"steps, device {device}")
    t0 = time.time()
    for epoch in range(resumed.epoch, epochs):
        loss_sum = torch.zeros((), device=device)
        for i, (x, y) in enumerate(data.batches(0, bs, gen)):
            set_lr(opt, cosine_lr(epoch * per_epoch + i, total, scfg["lr"]))
            loss = data.loss(model, (x.to(device, non_blocking=True), y.to(device, non_blocking=True)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        scores = data.evaluate(model, device, scfg["eval_batch_size"])
        history.append({"epoch": epoch + 1, "train_loss": loss_sum.item() / per_epoch,
                        "teacher_agreement": scores["val_acc"], "val_loss": scores["val_loss"]})
        checkpoint.save(stateful, gen, history, epoch + 1, final=epoch + 1 == epochs)
        log(f"epoch {epoch + 1}/{epochs}  loss {history[-1]['train_loss']:.4f}  "
            f"teacher agreement {scores['val_acc']:.4f} on {len(data.halves[1])} held-out synthetic images")
    seconds = time.time() - t0
    result = {
        "space": arch["space"], "choices": arch["choices"], "found_by": arch.get("found_by", {}),
        "variant": scfg["variant"], "natural_training_images": 0, "synthetic_training_images": len(data.halves[0]),
        "teacher_agreement": history[-1]["teacher_agreement"] if history else None,
        "heldout_synthetic_images": len(data.halves[1]), "parameters": params, "multiply_adds": macs,
        "train_seconds": seconds, "recipe": scfg, "sizes": sizes, "seed": seed, "history": history,
        "normalization": {"mean": list(data.mean), "std": list(data.std)}, "device": str(device),
        "versions": versions(),
    }
    if scfg["natural_test"]:
        test = dataset_from_config(cfg).test
        # The teacher's normalization: the one the student was trained with.
        scores = evaluate(model, test, device, data.mean, data.std, scfg["eval_batch_size"], cfg["data"]["workers"])
        result.update(top1=scores["top1"], top5=scores["top5"], test_images=scores["n"])
        log(f"top-1 {scores['top1']:.4f} on {scores['n']} natural test images (none trained on)")
    save_torch({"format": "dfnas-student", "architecture": {k: arch.get(k) for k in ("space", "space_args", "choices")},
                "sizes": sizes, "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                "normalization": result["normalization"], "state_dict": model.state_dict()}, out_dir / "student.pt")
    export_program(model, data.input_shape, out_dir / "student.pt2")
    checkpoint.remove()
    return result


@cli_main
def main(argv=None):
    parser = stage_parser("student", __doc__)
    parser.add_argument("--arch", required=True, help="architecture JSON of a search on student.variant")
    parser.add_argument("--dataset", required=True, help="the variant's merged dataset.h5")
    parser.add_argument("--labels", required=True, help="the variant's soft_labels.h5")
    parser.add_argument("--out-dir", required=True, help="folder for metrics.json, student.pt and student.pt2")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    if cfg["student"]["variant"] is None:
        raise DfnasError("config key 'student.variant' is null: name the synthesis variant the student learns from")
    out_dir = Path(args.out_dir)
    write_json(out_dir / "metrics.json", train_student(cfg, args.arch, args.dataset, args.labels, out_dir))


if __name__ == "__main__":
    main()
