"""Faults: damaged dfnas files, a live writer's lock, hand-edited architectures and metrics. Each
ends in one line that names the file and the remedy, never in a traceback or a wrong result."""

import json
import shutil
import subprocess
import sys

import re

import h5py
import pytest
import torch

from dfnas.config import validate_config
from dfnas.errors import REMAKE, DfnasError, FileInUse
from dfnas.report import make_report
from dfnas.search_data import SearchData
from dfnas.shards import SyntheticSplit
from dfnas.spaces import build_architecture
from dfnas.spaces.darts import DARTS_V2, genotype_to_dict


def read_everything(dataset, labels):
    """What a search on a synthetic source reads: its training and held-out images and their views."""
    cfg = validate_config({"device": "cpu"})
    for holdout in ("portion", "val"):
        data = SearchData(cfg, "full", 0, dataset, labels, synthetic_holdout=holdout)
        for half in (0, 1):
            for _ in data.batches(half, 4, torch.Generator().manual_seed(0)):
                pass
        for b in data.halves[1].split(8):
            data.heldout_batch(b)


def chunk_offset(path, name: str) -> int:
    """The byte offset in ``path`` of the first chunk of dataset ``name``."""
    with h5py.File(path) as f:
        return f[name].id.get_chunk_info(0).byte_offset


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("which, name", [(0, "train/images"), (1, "train/boxes"), (1, "train/logits")])
def test_a_damaged_chunk_fails_its_read_with_one_line(synthetic_set, tmp_path, which, name):
    """Every array carries a checksum per chunk: one flipped byte in the images, or in the cached
    views' boxes (stored uncompressed: without the checksum they would be read as valid numbers),
    is an error naming the file, not a search on wrong data."""
    files = [tmp_path / "dataset.h5", tmp_path / "labels.h5"]
    for src, dst in zip(synthetic_set, files):
        shutil.copy(src, dst)
    flip_byte(files[which], chunk_offset(files[which], name) + 5)
    with pytest.raises(DfnasError) as err:
        if which == 0:  # what the soft-label stage reads (a search checks the dataset's checksum first)
            SyntheticSplit(files[0], "train").pixels(range(30))
        else:
            read_everything(*files)
    message = str(err.value)
    assert message.startswith(f"{files[which]}: cannot read {name} (") and message.endswith(REMAKE)
    assert "\n" not in message


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("damage", ["truncated", "garbage header"])
def test_a_damaged_file_is_named_with_its_remedy(synthetic_set, tmp_path, which, damage):
    files = [tmp_path / "dataset.h5", tmp_path / "labels.h5"]
    for src, dst in zip(synthetic_set, files):
        shutil.copy(src, dst)
    data = files[which].read_bytes()
    files[which].write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\0" * 64 + data[64:])
    with pytest.raises(DfnasError) as err:
        read_everything(*files)
    assert str(err.value).startswith(f"{files[which]}: not a readable HDF5 file (")
    assert str(err.value).endswith(f"the file is damaged: {REMAKE}")


def test_a_live_writers_file_is_never_taken_for_damage(tmp_path):
    """A second synthesis job on a shard that another job is writing stops with one line and leaves
    the first job's partial file alone (HDF5 locks a file open for writing)."""
    from dfnas.synthesize import _open_partial

    partial = tmp_path / "shard_000.h5.partial"
    with h5py.File(partial, "w") as f:
        f.attrs["config_hash"] = "abc"
        f.attrs["rounds_done"] = 2
    writer = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               f"f = h5py.File({str(partial)!r}, 'a'); print('open', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        messages = []
        with pytest.raises(FileInUse, match=r"shard_000\.h5\.partial: another process has it open"):
            _open_partial(partial, {"config_hash": "abc", "teacher_sha256": "t", "shard": 0}, 4, messages.append)
        assert messages == []
    finally:
        writer.kill()
        writer.wait()
    with h5py.File(partial) as f:  # still the first job's file
        assert dict(f.attrs) == {"config_hash": "abc", "rounds_done": 2}


def darts_arch(**changes) -> dict:
    choices = genotype_to_dict(DARTS_V2)
    choices.update(changes)
    return {"space": "darts", "choices": choices}


@pytest.mark.parametrize("changes, message", [
    ({"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 7]] + genotype_to_dict(DARTS_V2)["normal"][2:]},
     "normal cell: node 0 takes input 7, it can take 0..1"),
    ({"reduce": genotype_to_dict(DARTS_V2)["reduce"][:6] + [["skip_connect", 2], ["max_pool_3x3", -1]]},
     "reduce cell: node 3 takes input -1, it can take 0..4"),
    ({"normal_concat": [2, 3, 9]}, "normal cell: concat [2, 3, 9] names states outside 0..5"),
])
def test_an_edited_darts_architecture_out_of_range_is_one_line(changes, message):
    with pytest.raises(DfnasError, match="^" + re.escape(f"DARTS architecture: {message}") + "$"):
        build_architecture(darts_arch(**changes), 1, 28, 10, {"cells": 3, "channels": 4})
    build_architecture(darts_arch(), 1, 28, 10, {"cells": 3, "channels": 4})  # the published cell builds


def test_a_metrics_file_with_a_word_for_a_number_is_one_line(tmp_path):
    from test_report import fake_run, report_config

    fake_run(tmp_path)
    metrics = tmp_path / "retrain" / "darts" / "full" / "seed1" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "top1": "high"}))
    with pytest.raises(DfnasError) as err:
        make_report(report_config(), tmp_path, tmp_path / "report", log=lambda *_: None)
    assert str(err.value) == f"{metrics}: top1 is 'high' (not a finite number); the file is damaged: {REMAKE}"
