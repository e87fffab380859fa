"""The teacher stage: produce a self-describing teacher file from one of four sources.

    train                       a BatchNorm ResNet for small images, trained on the natural training
                                split (the stand-in when no pre-trained classifier can be had)
    file:<path>                 a local checkpoint (sha256 checked when given)
    url:<address>               a download, sha256 required and checked before anything is written
    torchvision:<model>:<weights>   torchvision's weights API, e.g. torchvision:resnet50:IMAGENET1K_V1

A checkpoint from file/url may be a dfnas teacher file or a bare state dict (then ``teacher.arch``
names its architecture). Every source is checked against the dataset: number of classes, input
shape, and BatchNorm layers (synthesis matches their statistics). The teacher file holds the
architecture name and arguments, the state dict, the input normalization, the classes and a
checksum of the weights; ``teacher.json`` beside it repeats the metadata for people and reports.

    python -m dfnas.teacher --config config.yaml --out results/default/teacher/teacher.pt
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.config import validate_config
from dfnas.data import data_identity, dataset_from_config, description_shape
from dfnas.download import download_file
from dfnas.errors import REMAKE, DfnasError
from dfnas.models import build_model
from dfnas.runtime import (
    config_hash,
    resolve_device,
    resolve_precision,
    save_torch,
    seed_everything,
    sha256_file,
    read_json,
    sha256_state_dict,
    versions,
    write_json,
)
from dfnas.train import Recipe, evaluate, train_classifier

TEACHER_FORMAT = "dfnas-teacher"
TEACHER_FORMAT_VERSION = 1


@dataclass
class Teacher:
    """A loaded teacher: the frozen model plus what the file says about it."""

    model: nn.Module
    meta: dict

    @property
    def mean(self) -> list[float]:
        return self.meta["normalization"]["mean"]

    @property
    def std(self) -> list[float]:
        return self.meta["normalization"]["std"]

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])

    @property
    def checksum(self) -> str:
        return self.meta["weights_sha256"]


def parse_source(source: str) -> tuple[str, str]:
    kind, _, value = source.partition(":")
    if kind == "train" and not value:
        return "train", ""
    if kind in ("file", "url", "torchvision") and value:
        return kind, value
    raise DfnasError(f"config key 'teacher.source': {source!r} is not train, file:<path>, url:<address> "
                     "or torchvision:<model>:<weights>")


# --------------------------------------------------------------------------------------------
# Reading checkpoints


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DfnasError(f"teacher file {path} does not exist") from None
    except Exception as exc:  # torch raises several types for files that are not checkpoints
        if "Weights only load failed" in str(exc):
            raise DfnasError(f"{path}: holds pickled Python objects besides tensors and plain data; dfnas loads "
                             "checkpoints with weights_only=True, so save a state dict instead") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DfnasError(f"{path}: not a readable PyTorch checkpoint ({first[:200]})") from None


def _bare_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DfnasError(f"{path}: holds neither a dfnas teacher nor a state dict of tensors")
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):  # saved from DataParallel
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _load_weights(model: nn.Module, state_dict: dict, what: str) -> None:
    result = model.load_state_dict(state_dict, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:4])}" + (" ..." if len(result.missing_keys) > 4 else ""))
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:4])}"
                        + (" ..." if len(result.unexpected_keys) > 4 else ""))
    if problems:
        raise DfnasError(f"{what}: the weights do not fit the architecture ({'; '.join(problems)})")


def _build_and_load(arch: str, kwargs: dict, state_dict: dict, what: str) -> nn.Module:
    model = build_model(arch, **kwargs)
    try:
        _load_weights(model, state_dict, what)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "size mismatch" in ln), first[0] if first else "")
        raise DfnasError(f"{what}: the weights do not fit the architecture ({detail[:200]})") from None
    return model


def load_teacher(path, device="cpu") -> Teacher:
    """Load a teacher file written by this stage; the model comes back frozen in eval mode."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != TEACHER_FORMAT:
        raise DfnasError(f"{path}: not a dfnas teacher file (make one with python -m dfnas.teacher)")
    if obj.get("format_version", 0) > TEACHER_FORMAT_VERSION:
        raise DfnasError(f"{path}: teacher format version {obj['format_version']} is newer than this dfnas reads")
    _check_teacher_record(obj, path)
    model = _build_and_load(obj["arch"], obj["arch_kwargs"], obj["state_dict"], str(path))
    if sha256_state_dict(model.state_dict()) != obj["weights_sha256"]:
        raise DfnasError(f"{path}: weights do not match the checksum stored in the file (corrupted?)")
    # The file's description of its inputs and classes against what its network does.
    try:
        check_teacher(model, obj["num_classes"], obj["input_shape"], obj["normalization"], "its own record")
    except DfnasError as exc:
        raise DfnasError(f"{path}: {exc}; {REMAKE}") from None
    model.eval().requires_grad_(False).to(device)
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return Teacher(model, meta)


# --------------------------------------------------------------------------------------------
# Checks against the dataset


def dataset_label(info: dict) -> str:
    """How errors name a dataset: its name, and for an image folder where it is."""
    return f"the image folder {info['source']}" if info.get("name") == "folder" and info.get("source") else info["name"]


def check_teacher(model: nn.Module, num_classes: int, input_shape, normalization: dict, dataset: str) -> None:
    """Raise a one-line error when the teacher cannot serve this dataset or this method."""
    channels = input_shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DfnasError(f"teacher does not accept {dataset} inputs of shape {tuple(input_shape)} ({first[:160]})") from None
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[1] != num_classes:
        got = out.shape[1] if out.ndim == 2 else tuple(out.shape)
        raise DfnasError(f"teacher outputs {got} classes but {dataset} has {num_classes}")
    for key in ("mean", "std"):
        if len(normalization[key]) != channels:
            raise DfnasError(f"teacher normalization {key} has {len(normalization[key])} values but {dataset} "
                             f"images have {channels} channel(s)")
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad or not torch.isfinite(out).all():
        where = f"{len(bad)} of its tensors ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) hold" if bad \
            else "its outputs hold"
        raise DfnasError(f"teacher unusable: {where} NaN or infinite values")
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise DfnasError("teacher has no BatchNorm layers; synthesis matches their running statistics, so dfnas "
                         "needs a BatchNorm network")


# --------------------------------------------------------------------------------------------
# Sources


# What a teacher file holds besides its format: `make_teacher` writes them all.
TEACHER_KEYS = {"arch": str, "arch_kwargs": dict, "state_dict": dict, "normalization": dict, "weights_sha256": str,
                "num_classes": int, "input_shape": list}


def _check_teacher_record(obj: dict, path: Path) -> None:
    missing = [k for k, kind in TEACHER_KEYS.items() if not isinstance(obj.get(k), kind)]
    if missing:
        raise DfnasError(f"{path}: an incomplete dfnas teacher file (no valid {', '.join(missing)}); {REMAKE}")


def _from_checkpoint(path: Path, cfg: dict, info: dict) -> tuple[nn.Module, dict]:
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == TEACHER_FORMAT:
        _check_teacher_record(obj, path)
        model = _build_and_load(obj["arch"], obj["arch_kwargs"], obj["state_dict"], str(path))
        return model, {"arch": obj["arch"], "arch_kwargs": obj["arch_kwargs"], "normalization": obj["normalization"],
                       "class_names": obj.get("class_names")}
    state_dict = _bare_state_dict(obj, path)
    arch = cfg["teacher"]["arch"]
    kwargs = _arch_kwargs(arch, info)
    model = _build_and_load(arch["name"], kwargs, state_dict, f"{path} as {arch['name']}")
    norm = cfg["teacher"].get("normalization") or {"mean": info["mean"], "std": info["std"]}
    return model, {"arch": arch["name"], "arch_kwargs": kwargs, "normalization": dict(norm)}


def _arch_kwargs(arch: dict, info: dict) -> dict:
    """Constructor arguments: the configured ones, with the dataset's classes (and channels) filled in."""
    kwargs = dict(arch.get("kwargs") or {})
    kwargs.setdefault("num_classes", info["num_classes"])
    if not arch["name"].startswith("torchvision:"):  # torchvision classifiers take RGB only
        kwargs.setdefault("in_channels", info["input_shape"][0])
    return kwargs


def verify_sha256(path: Path, expected: str, what: str) -> str:
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        raise DfnasError(f"{what}: sha256 is {actual} but teacher.sha256 says {expected.lower()}")
    return actual


def _from_torchvision(value: str, info: dict) -> tuple[nn.Module, dict]:
    import torchvision

    name, _, weights_name = value.partition(":")
    try:
        weights_enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise DfnasError(f"config key 'teacher.source': torchvision has no model {name!r}") from None
    try:
        weights = weights_enum[weights_name]
    except KeyError:
        known = ", ".join(w.name for w in weights_enum)
        raise DfnasError(f"config key 'teacher.source': {name} has no weights {weights_name!r} (known: {known})") from None
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except Exception as exc:  # download failures surface as URLError/OSError/RuntimeError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DfnasError(f"torchvision weights {name}:{weights_name} could not be loaded ({first}); put the file "
                         f"in $TORCH_HOME/hub/checkpoints/ or use teacher.source file:<path>") from None
    transform = weights.transforms()
    crop = transform.crop_size[0] if isinstance(transform.crop_size, (list, tuple)) else transform.crop_size
    meta = {
        "arch": f"torchvision:{name}",
        "arch_kwargs": {"num_classes": len(weights.meta["categories"])},
        "normalization": {"mean": list(transform.mean), "std": list(transform.std)},
        "class_names": list(weights.meta["categories"]),
        "native_input_shape": [3, crop, crop],
    }
    return model, meta


def _train_standin(cfg: dict, log, checkpoint: Path) -> tuple[nn.Module, dict, dict]:
    data = dataset_from_config(cfg)
    info = data.info.to_dict()
    arch = cfg["teacher"]["arch"]
    kwargs = _arch_kwargs(arch, info)
    device = resolve_device(cfg["device"])
    seed_everything(cfg["seed"])
    model = build_model(arch["name"], **kwargs)
    recipe = Recipe.from_dict(cfg["teacher"]["train"])
    n_params = sum(p.numel() for p in model.parameters())
    log(f"training stand-in teacher {arch['name']} {kwargs} ({n_params:,} parameters) on {len(data.train)} "
        f"{data.info.name} images, {recipe.epochs} epochs, device {device}")
    t0 = time.time()
    history = train_classifier(model, data.train, recipe, device, cfg["seed"], info["mean"], info["std"], log=log,
                               precision=resolve_precision(cfg["precision"], device),
                               num_workers=cfg["data"]["workers"], checkpoint=checkpoint,
                               identity={"arch": arch, "data": data_identity(cfg, data)})
    seconds = time.time() - t0
    final = evaluate(model, data.test, device, info["mean"], info["std"], cfg["data"]["eval_batch_size"],
                     cfg["data"]["workers"])
    log(f"stand-in teacher: test top-1 {final['top1']:.4f} after {seconds:.0f} s")
    model.cpu()
    # The training record goes to teacher.json only: the teacher file's bytes then depend on the
    # weights and the config alone (a resumed training writes the same file as an uninterrupted one).
    train_record = {"recipe": recipe.to_dict(), "history": history, "test_top1": final["top1"]}
    meta = {"arch": arch["name"], "arch_kwargs": kwargs, "normalization": {"mean": info["mean"], "std": info["std"]}}
    return model, meta, {"train": train_record, "train_seconds": seconds, "train_device": str(device)}


def make_teacher(cfg: dict, info: dict, out: Path, log=print) -> dict:
    """Build the teacher described by ``cfg`` for the dataset ``info``; write ``out`` and ``out``.json."""
    out = Path(out)
    tcfg = cfg["teacher"]
    kind, value = parse_source(tcfg["source"])
    extra: dict = {}
    source_sha = None
    checkpoint = out.with_name(out.name + ".ckpt")
    with contextlib.ExitStack() as stack:
        if kind == "train":
            model, meta, extra = _train_standin(cfg, log, checkpoint)
        elif kind == "torchvision":
            model, meta = _from_torchvision(value, info)
        else:
            if kind == "url":  # the config check has made sure of teacher.sha256
                out.parent.mkdir(parents=True, exist_ok=True)
                tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=".teacher-download-", dir=out.parent))
                path = Path(tmpdir) / "download"
                log(f"downloading teacher from {value}")
                download_file(value, path, sha256=tcfg["sha256"])
                source_sha = tcfg["sha256"].lower()
            else:
                path = Path(value)
                if not path.is_file():
                    what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
                    raise DfnasError(f"config key 'teacher.source': file {path} {what}")
                source_sha = verify_sha256(path, tcfg["sha256"], str(path)) if tcfg.get("sha256") else sha256_file(path)
            model, meta = _from_checkpoint(path, cfg, info)
    input_shape = list(info["input_shape"])
    check_teacher(model, info["num_classes"], input_shape, meta["normalization"], dataset_label(info))
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    class_names = meta.pop("class_names", None) or list(info["class_names"])
    record = {
        "format": TEACHER_FORMAT,
        "format_version": TEACHER_FORMAT_VERSION,
        "source": tcfg["source"],
        "source_sha256": source_sha,
        **meta,
        "num_classes": info["num_classes"],
        "class_names": class_names,
        "input_shape": input_shape,
        "dataset": info["name"],
        "weights_sha256": sha256_state_dict(state_dict),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config_hash": config_hash({"seed": cfg["seed"], "data": cfg["data"], "teacher": tcfg}),
        "seed": cfg["seed"],
        "versions": versions(),
    }
    file_sha = save_torch({**record, "state_dict": state_dict}, out)
    checkpoint.unlink(missing_ok=True)  # kept until now so that a killed training resumes
    write_json(out.with_suffix(".json"), {**record, "file_sha256": file_sha, **extra})
    log(f"teacher written to {out} (weights sha256 {record['weights_sha256'][:12]}, {record['parameters']:,} parameters)")
    return record


def dataset_info(cfg: dict, dataset_json=None) -> dict:
    """The dataset description, from the data stage's JSON when given, else by loading the dataset."""
    if not dataset_json:
        return dataset_from_config(cfg).summary()
    info = read_json(dataset_json, "the teacher stage", "make it with python -m dfnas.data --out")
    description_shape(info, dataset_json)  # input_shape and num_classes, as integers
    for key, kind in (("name", str), ("class_names", list), ("mean", list), ("std", list)):
        if not isinstance(info.get(key), kind):
            raise DfnasError(f"{dataset_json}: not a dataset description (no {key}); {REMAKE}")
    return info


@cli_main
def main(argv=None):
    parser = stage_parser("teacher", __doc__,
                          epilog="Sources: train | file:<path> | url:<address> | torchvision:<model>:<weights>")
    parser.add_argument("--source", help="overrides teacher.source")
    parser.add_argument("--sha256", help="overrides teacher.sha256")
    parser.add_argument("--dataset-json", help="dataset description written by python -m dfnas.data")
    parser.add_argument("--out", required=True, help="teacher file to write (metadata goes to the same name .json)")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    if args.source:
        cfg["teacher"]["source"] = args.source
    if args.sha256:
        cfg["teacher"]["sha256"] = args.sha256
    validate_config(cfg)
    info = dataset_info(cfg, args.dataset_json)
    make_teacher(cfg, info, Path(args.out))


if __name__ == "__main__":
    main()
