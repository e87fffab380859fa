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
    ({"normal": [["sep_conv_3x3"]] + genotype_to_dict(DARTS_V2)["normal"][1:]},
     "normal cell: edge 0 is ['sep_conv_3x3'], not [operation, input]"),
])
def test_an_edited_darts_architecture_out_of_range_is_one_line(changes, message):
    with pytest.raises(DfnasError, match="^" + re.escape(f"DARTS architecture: {message}") + "$"):
        build_architecture(darts_arch(**changes), 1, 28, 10, {"cells": 3, "channels": 4})
    build_architecture(darts_arch(), 1, 28, 10, {"cells": 3, "channels": 4})  # the published cell builds


@pytest.mark.parametrize("path", [[3, 1, 1.5] + [0] * 17, "31" + "0" * 18, [True] + [0] * 19, None])
def test_an_edited_spos_path_of_non_integers_is_one_line(path):
    arch = {"space": "spos", "choices": {"path": [3, 1] + [0] * 18}}
    build_architecture(arch, 1, 28, 10, {})  # a path of integers builds
    arch["choices"]["path"] = path
    with pytest.raises(DfnasError, match=r"^SPOS architecture: choices need a 'path', a list of integer block "
                                         r"choices; got "):
        build_architecture(arch, 1, 28, 10, {})


def test_a_metrics_file_with_a_word_for_a_number_is_one_line(tmp_path):
    from test_report import fake_run, report_config

    fake_run(tmp_path)
    metrics = tmp_path / "retrain" / "darts" / "full" / "seed1" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "top1": "high"}))
    with pytest.raises(DfnasError) as err:
        make_report(report_config(), tmp_path, tmp_path / "report", log=lambda *_: None)
    assert str(err.value) == f"{metrics}: top1 is 'high' (not a finite number); the file is damaged: {REMAKE}"
    # A percentage where a fraction belongs would show as 7350% in the tables.
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "top1": 73.5}))
    with pytest.raises(DfnasError) as err:
        make_report(report_config(), tmp_path, tmp_path / "report", log=lambda *_: None)
    assert str(err.value) == f"{metrics}: top1 is 73.5 (not a fraction from 0 to 1); the file is damaged: {REMAKE}"


# ---------------------------------------------------------------------------------------------
# Out of space, out of permission: small file systems of their own (tmpfs, as root; skipped otherwise)


@pytest.fixture
def small_fs(tmp_path):
    """``mount(size, read_only=False)`` -> a fresh tmpfs folder of that size; unmounted afterwards."""
    mounted = []

    def mount(size: str, read_only: bool = False):
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def stage_error(capsys, main, argv, printed: list | None = None) -> str:
    """Run a stage's main; return the one line it printed as it exited with status 2 (and append
    what it printed to stdout to ``printed``)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    if printed is not None:
        printed.append(captured.out)
    return captured.err.strip()


def test_synthesis_refuses_to_start_without_room_for_its_shard(teacher_file, small_fs, capsys):
    from conftest import SMALL_SYNTHESIS
    from dfnas.synthesize import main

    folder = small_fs("64k")
    config = json.dumps({"device": "cpu", "synthesis": SMALL_SYNTHESIS})
    line = stage_error(capsys, main, ["--config-json", config, "--teacher", str(teacher_file), "--variant", "full",
                                      "--out", str(folder / "shard_000.h5")])
    assert re.fullmatch(rf"dfnas: error: {folder}: \d+\.\d KiB free, this job writes up to 1\.\d MiB; "
                        r"free space and rerun", line), line
    assert list(folder.iterdir()) == []  # nothing written, no temporary file


@pytest.fixture
def retrain_setup(base_config, tmp_path):
    """A retrain config (on the fake Fashion-MNIST) and the published DARTS cell's architecture file."""
    arch = tmp_path / "architecture.json"
    arch.write_text(json.dumps(darts_arch()))
    config = {**base_config, "retrain": {"train_images": 100, "epochs": 1, "batch_size": 25,
                                         "darts": {"cells": 3, "channels": 4}}}
    return config, arch


def test_a_read_only_folder_is_refused_before_any_training(retrain_setup, small_fs, capsys):
    from dfnas.retrain import main

    config, arch = retrain_setup
    folder = small_fs("1m", read_only=True)
    printed = []
    line = stage_error(capsys, main, ["--config-json", json.dumps(config), "--arch", str(arch),
                                      "--out", str(folder / "darts" / "metrics.json")], printed)
    assert printed == [""]  # refused before a word of training
    assert line == (f"dfnas: error: {folder / 'darts'}: cannot write it (read-only file system); "
                    "free space or fix the folder's permissions and rerun")


def test_a_write_failure_mid_run_is_one_line(capsys):
    """HDF5 reports a full disk as a RuntimeError that carries errno 28 in its text: one line."""
    from dfnas.cli import cli_main

    @cli_main
    def main(argv=None):
        raise RuntimeError("Can't decrement id ref count (file write failed: time = now\n, filename = "
                           "'/data/run/shard_000.h5.partial', file descriptor = 3, errno = 28, error message = "
                           "'No space left on device')")

    assert stage_error(capsys, main, []) == (
        "dfnas: error: /data/run/shard_000.h5.partial: cannot write it (no space left on the device); "
        "free space or fix the folder's permissions and rerun")

    @cli_main
    def bug(argv=None):
        raise RuntimeError("a bug, not a full disk")

    with pytest.raises(RuntimeError, match="a bug"):  # anything else keeps its traceback
        bug([])


def test_a_partial_shard_damaged_by_a_failed_write_is_discarded_on_resume(teacher, tmp_path):
    """A round whose write failed (disk full) may be marked done with bytes missing: the resume reads
    every checksum and starts the shard afresh instead of finishing it on damaged rows."""
    from conftest import shard_killed_after_round_2
    from dfnas.synthesize import run_shard

    cfg, reference, out, partial = shard_killed_after_round_2(teacher, tmp_path)
    flip_byte(partial, chunk_offset(partial, "images") + 5)
    messages = []
    run_shard(cfg, teacher, "full", 0, out, log=messages.append)
    assert messages[0].startswith("discarding unreadable killed.h5.partial (cannot read its arrays (")
    assert "delete it" not in messages[0]  # the job discards it itself
    assert sum("written" in m for m in messages) == 3  # all three rounds again
    assert out.read_bytes() == reference.read_bytes()


def test_a_partial_shard_with_fewer_rows_than_its_rounds_is_discarded(teacher, tmp_path):
    """Rounds marked done whose rows are missing (a partial cut short by hand or a bad copy): the
    resume must not pad them with zero images, and starts the shard afresh."""
    import h5py

    from conftest import shard_killed_after_round_2
    from dfnas import shards as sh
    from dfnas.synthesize import run_shard

    cfg, reference, out, partial = shard_killed_after_round_2(teacher, tmp_path)
    with h5py.File(partial, "a") as f:
        assert int(f.attrs["rounds_done"]) == 2
        per_round = len(f["images"]) // 2  # the shard's share of a round
        sh.truncate(f, per_round)  # one round of rows left under two marked done
    messages = []
    run_shard(cfg, teacher, "full", 0, out, log=messages.append)
    assert messages[0] == (f"discarding unreadable killed.h5.partial (2 rounds marked done, but "
                           f"{', '.join(sh.FIELDS)} hold {per_round} of their {2 * per_round} rows)")
    assert sum("written" in m for m in messages) == 3
    assert out.read_bytes() == reference.read_bytes()


def test_a_partial_shard_this_job_may_not_write_is_kept(tmp_path, monkeypatch):
    """A partial shard that cannot be opened for writing (its permissions, a read-only mount) is an
    error, never taken for damage: the rounds it holds are not deleted."""
    from dfnas.errors import Unwritable
    from dfnas.synthesize import _open_partial

    partial = tmp_path / "shard_000.h5.partial"
    with h5py.File(partial, "w") as f:
        f.attrs["rounds_done"] = 2
    opened = h5py.File

    def refuse_writes(path, mode="r", **kwargs):
        if mode != "r":
            raise PermissionError(13, "Unable to synchronously open file (unable to open file: name = "
                                  f"'{path}', errno = 13, error message = 'Permission denied')")
        return opened(path, mode, **kwargs)

    monkeypatch.setattr(h5py, "File", refuse_writes)
    with pytest.raises(Unwritable, match=r"shard_000\.h5\.partial: cannot write it \(permission denied\)"):
        _open_partial(partial, {"config_hash": "abc", "teacher_sha256": "t", "shard": 0}, 4, lambda *_: None)
    monkeypatch.undo()
    with h5py.File(partial) as f:
        assert f.attrs["rounds_done"] == 2


def test_a_full_disk_while_writing_names_the_output_not_a_temporary_file(small_fs):
    from dfnas.errors import Unwritable
    from dfnas.runtime import write_text

    folder = small_fs("16k")
    with pytest.raises(Unwritable) as err:
        write_text(folder / "summary.md", "x" * 200_000)
    assert str(err.value) == (f"{folder / 'summary.md'}: cannot write it (no space left on the device); "
                              "free space or fix the folder's permissions and rerun")
    assert list(folder.iterdir()) == []  # the temporary file is gone
