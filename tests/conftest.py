"""Shared fixtures: small datasets in the real on-disk formats, written by the tests themselves."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    """Under pytest-xdist (`make test`), each test process takes its share of the cores, not all.
    Every loop saves its checkpoint after every epoch (the interruption tests kill a job after epoch
    1), in this process and in the jobs it starts; test_checkpoint.py tests the interval itself."""
    os.environ["DFNAS_CHECKPOINT_SECONDS"] = "0"
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def quiet(*_):
    """A log callback that drops every message."""


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path = Path(str(path) + (".gz" if gz else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def class_pattern_images(labels: np.ndarray, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Images a small network learns in one epoch: class k lights a horizontal band at row 2k+2."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = rng.integers(0, 40, size=(n, channels, size, size), dtype=np.uint8)
    for i, k in enumerate(labels):
        row = (2 * int(k) + 2) % (size - 2)
        images[i, :, row : row + 2, :] = 230
    return images


def make_idx_dataset(folder: Path, n_train: int = 200, n_test: int = 100, gz: bool = False, seed: int = 0):
    """An MNIST-format dataset of 10 learnable classes in ``folder``; returns (train_labels, test_labels)."""
    rng = np.random.default_rng(seed)
    out = []
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = class_pattern_images(labels, seed=seed + (split == "test"))[:, 0]
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), gz)
        out.append(labels)
    return tuple(out)


def write_cifar(folder: Path, classes: int, n_train: int = 50, n_test: int = 20, seed: int = 0):
    """CIFAR-10 (classes=10) or CIFAR-100 (classes=100) python-format batches; returns the train labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n):
        labels = (np.arange(n) % classes).tolist()
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        return data, labels

    if classes == 10:
        train_labels = []
        for i in range(1, 6):
            data, labels = batch(n_train // 5)
            train_labels += labels
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps({"data": data, "labels": labels}))
        data, labels = batch(n_test)
        (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": labels}))
        names = [f"class{i}" for i in range(10)]
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    else:
        data, train_labels = batch(n_train)
        (folder / "train").write_bytes(pickle.dumps({"data": data, "fine_labels": train_labels}))
        data, labels = batch(n_test)
        (folder / "test").write_bytes(pickle.dumps({"data": data, "fine_labels": labels}))
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return train_labels


@pytest.fixture
def fake_fmnist(tmp_path):
    """A data root holding a small Fashion-MNIST-format dataset under fashion-mnist/."""
    root = tmp_path / "data"
    make_idx_dataset(root / "fashion-mnist", n_train=300, n_test=100, gz=True)
    return root


@pytest.fixture
def base_config(fake_fmnist):
    """A validated config on the fake Fashion-MNIST, with a tiny stand-in teacher recipe."""
    from dfnas.config import validate_config

    return validate_config({
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "data": {"name": "fashion_mnist", "root": str(fake_fmnist), "download": False},
        "teacher": {"source": "train", "arch": {"name": "resnet_cifar", "kwargs": {"depth": 8, "width": 4}},
                    "train": {"epochs": 4, "batch_size": 25, "crop_padding": 0, "flip": False}},
    })


def dataset_json(cfg: dict, folder: Path) -> Path:
    """The data stage's description of ``cfg``'s dataset, written to ``folder``/dataset.json."""
    from dfnas.data import dataset_from_config
    from dfnas.runtime import write_json

    path = Path(folder) / "dataset.json"
    write_json(path, dataset_from_config(cfg).summary())
    return path


def planned_jobs(output: str) -> dict:
    """rule -> number of jobs, from the job-count table Snakemake prints (with -n or before a run)."""
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


def run_cli(*args, cwd=None, timeout=600):
    """Run ``python -m ...`` the way a user or a rule does; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory):
    """A real teacher file: a small ResNet whose BatchNorm layers saw some data (shared by the tests)."""
    import torch

    from dfnas.config import validate_config
    from dfnas.models import build_model
    from dfnas.teacher import dataset_info, make_teacher

    root = tmp_path_factory.mktemp("data")
    make_idx_dataset(root / "fashion-mnist", 100, 20)
    cfg = validate_config({"device": "cpu", "data": {"root": str(root), "download": False},
                           "teacher": {"arch": {"kwargs": {"depth": 8, "width": 4}}}})
    torch.manual_seed(0)
    model = build_model("resnet_cifar", depth=8, width=4, num_classes=10, in_channels=1)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(32, 1, 28, 28) * 0.5 + 0.2)
    bare = root / "bare.pt"
    torch.save(model.state_dict(), bare)
    out = root / "teacher.pt"
    cfg["teacher"]["source"] = f"file:{bare}"
    make_teacher(cfg, dataset_info(cfg), out, log=quiet)
    return out


@pytest.fixture(scope="session")
def synthetic_set(teacher_file, tmp_path_factory):
    """A merged synthetic set (40 images, 1 validation image per class) and its 3-view soft labels."""
    from dfnas.config import validate_config
    from dfnas.merge import merge
    from dfnas.soft_labels import make_soft_labels
    from dfnas.synthesize import run_shard
    from dfnas.teacher import load_teacher

    teacher = load_teacher(teacher_file)
    cfg = validate_config({"device": "cpu", "synthesis": {
        "shards": 1, "images_per_round": 20, "rounds": 2, "batch_size": 20, "iterations_half": 2,
        "iterations_full": 2, "warmup": 1, "val_per_class": 1}, "soft_labels": {"views": 3}})
    d = tmp_path_factory.mktemp("syn")
    shard = run_shard(cfg, teacher, "full", 0, d / "shard_000.h5", log=quiet)
    merge([shard], teacher.checksum, 1, 0, d / "dataset.h5")
    make_soft_labels(cfg, teacher, d / "dataset.h5", d / "labels.h5", log=quiet)
    return d / "dataset.h5", d / "labels.h5"


# ---------------------------------------------------------------------------------------------
# Synthesis: a small config and a loaded teacher, shared by the synthesize, merge and soft-label tests

SMALL_SYNTHESIS = {"shards": 2, "images_per_round": 12, "rounds": 3, "batch_size": 6, "iterations_half": 2,
                   "iterations_full": 3, "warmup": 1, "val_per_class": 1}


def shard_killed_after_round_2(teacher, tmp_path: Path):
    """The small config's shard 0 of `full` made uninterrupted (``ref.h5``) and killed after round 2
    of 3 (``killed.h5``, its ``killed.h5.partial`` left behind): ``(cfg, reference, out, partial)``."""
    from dfnas.synthesize import run_shard

    cfg = syn_config()
    reference = run_shard(cfg, teacher, "full", 0, tmp_path / "ref.h5", log=quiet)

    def kill_after_round_2(msg):
        if "round 2/3 written" in msg:
            raise Killed

    out = tmp_path / "killed.h5"
    with pytest.raises(Killed):
        run_shard(cfg, teacher, "full", 0, out, log=kill_after_round_2)
    return cfg, reference, out, tmp_path / "killed.h5.partial"


def syn_config(**synthesis):
    """A validated config with a tiny synthesis section (``synthesis`` overrides keys of it) and 4 views."""
    from dfnas.config import validate_config

    return validate_config({"seed": 0, "device": "cpu", "synthesis": {**SMALL_SYNTHESIS, **synthesis},
                            "soft_labels": {"views": 4}})


@pytest.fixture
def teacher(teacher_file):
    from dfnas.teacher import load_teacher

    return load_teacher(teacher_file)


@pytest.fixture
def two_shards(teacher, tmp_path):
    """The config and the two shards of a tiny ``full`` variant."""
    from dfnas.synthesize import run_shard

    cfg = syn_config()
    return cfg, [run_shard(cfg, teacher, "full", s, tmp_path / f"shard_{s:03d}.h5", log=quiet) for s in (0, 1)]


# ---------------------------------------------------------------------------------------------
# Kill and resume: the one check of every loop that checkpoints per epoch (searches, retraining)


class Killed(Exception):
    """What a log callback raises to kill a job at a chosen message."""


EPOCH_1_DONE = re.compile(r"\bepoch 1/\d+\b")  # the per-epoch line every training loop logs after epoch 1


def assert_resumes_after_a_kill(run, tmp_path: Path) -> list[str]:
    """Run a job three times: uninterrupted; killed (by its log callback) at the line that reports
    epoch 1 done, after its checkpoint is written; and again in the killed run's folder. The last must
    say it resumes after epoch 1, not redo epoch 1, and end with the uninterrupted run's choices and
    history.

    ``run(out_dir, log)`` runs the job with its outputs and checkpoint in ``out_dir`` and returns
    ``(choices, history)``: what it found and its per-epoch rows. Returns the resumed run's messages.
    """
    ref_choices, ref_history = run(tmp_path / "uninterrupted", quiet)
    assert len(ref_history) >= 2, "a job of one epoch has nothing left to resume"

    def kill(msg):
        if EPOCH_1_DONE.search(msg):
            raise Killed(msg)

    with pytest.raises(Killed):
        run(tmp_path / "killed", kill)
    messages = []
    choices, history = run(tmp_path / "killed", messages.append)
    assert any(m.startswith("resuming from") and m.endswith("after epoch 1") for m in messages), messages
    assert not any(EPOCH_1_DONE.search(m) for m in messages), "the resumed run trained epoch 1 again"
    assert choices == ref_choices
    assert history == ref_history
    return messages
