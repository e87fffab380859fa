"""Process helpers shared by every stage (dfnas.runtime): time formats, progress lines, derived seeds,
atomic files, CSV and JSON files, config hashes."""

import csv
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from dfnas import runtime
from dfnas.errors import DfnasError
from dfnas.runtime import atomic_path, config_hash, derived_seed, format_seconds, progress, read_json, write_csv


def test_format_seconds():
    assert format_seconds(0) == "0:00"
    assert format_seconds(59) == "0:59"
    assert format_seconds(61.4) == "1:01"
    assert format_seconds(3599) == "59:59"
    assert format_seconds(3599.6) == "1:00:00"  # rounded first
    assert format_seconds(3600) == "1:00:00"
    assert format_seconds(3725) == "1:02:05"
    assert format_seconds(36000 + 61) == "10:01:01"


def test_progress_extrapolates_from_the_work_done_here(monkeypatch):
    monkeypatch.setattr(runtime, "time", SimpleNamespace(time=lambda: 1030.0))
    # 30 s for 3 of 10 units: 10 s each, 7 to go.
    assert progress(1000.0, 3, 10) == "elapsed 0:30  eta 1:10"
    # A resumed job that found 2 units done spent the 30 s on one unit: 7 to go take 3:30.
    assert progress(1000.0, 3, 10, start=2) == "elapsed 0:30  eta 3:30"
    # Nothing done in this process yet: each remaining unit is priced at the elapsed time.
    assert progress(1000.0, 2, 10, start=2) == "elapsed 0:30  eta 4:00"
    assert progress(1000.0, 10, 10) == "elapsed 0:30  eta 0:00"


def test_derived_seed_is_stable_and_every_part_counts():
    # The same value on every machine and Python version (sha256 of "0/full/0/1", 63 bits).
    assert derived_seed(0, "full", 0, 1) == 5094292730760403127
    assert derived_seed(0, "retrain", 0) == 4237187242386524594
    seeds = {derived_seed(seed, variant, shard, r) for seed in range(3) for variant in ("full", "noise")
             for shard in range(5) for r in range(10)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)
    assert derived_seed(1, 2) != derived_seed(2, 1)  # the order of the parts counts
    assert derived_seed(0, "full", 1) != derived_seed(0, "full", 1, 0)  # and their number


def test_atomic_path_writes_on_success_only(tmp_path):
    out = tmp_path / "sub" / "out.txt"
    with atomic_path(out) as tmp:
        assert tmp.parent == out.parent and tmp != out
        tmp.write_text("first")
        assert not out.exists()
    assert out.read_text() == "first"
    with pytest.raises(RuntimeError, match="killed"), atomic_path(out) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("killed")
    assert out.read_text() == "first"  # the old file is left as it was
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("half written")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.txt", "sub"]  # no temporary file is left


def test_write_csv_takes_the_union_of_the_columns(tmp_path):
    write_csv(tmp_path / "h.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "acc": 0.25}, {"generation": 1, "epoch": ""}])
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines == ["epoch,loss,acc,generation", "1,0.5,,", "2,,0.25,", ",,,1"]
    assert list(csv.DictReader(open(tmp_path / "h.csv")))[1] == {"epoch": "2", "loss": "", "acc": "0.25",
                                                                 "generation": ""}
    write_csv(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_text().splitlines() == ["epoch"]


def test_read_json_errors_are_one_line(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps({"a": [1, 2]}))
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    with pytest.raises(DfnasError) as missing:
        read_json(tmp_path / "none.json", "the report", hint="run the search first")
    assert str(missing.value) == f"the report needs {tmp_path / 'none.json'}, which does not exist (run the search first)"
    (tmp_path / "bad.json").write_text('{"a": [1, 2')
    with pytest.raises(DfnasError, match=r"bad\.json: not valid JSON \(") as damaged:
        read_json(tmp_path / "bad.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DfnasError, match=r"binary\.json: not valid JSON \(") as binary:
        read_json(tmp_path / "binary.json")
    assert all("\n" not in str(e.value) for e in (missing, damaged, binary))
    assert str(damaged.value).endswith("; the file is damaged: delete it and rerun to remake it")
    with pytest.raises(DfnasError, match=r"bad\.json: not valid JSON \(.*\); the file is damaged: fix it$"):
        read_json(tmp_path / "bad.json", remedy="fix it")  # a file the user wrote
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DfnasError) as listed:
        read_json(tmp_path / "list.json")
    assert str(listed.value).startswith(f"{tmp_path / 'list.json'}: holds a list (not a JSON dict)")
    assert read_json(tmp_path / "list.json", kind=list) == [1, 2]
    for text, shown in (('{"top1": NaN}', "nan"), ('{"top1": "high"}', "'high'"), ('{"top1": true}', "True"),
                        ("{}", "None")):
        (tmp_path / "m.json").write_text(text)
        with pytest.raises(DfnasError, match=rf"m\.json: top1 is {shown} \(not a finite number\)"):
            read_json(tmp_path / "m.json", numbers=("top1",))
    (tmp_path / "m.json").write_text('{"top1": 0.5}')
    assert read_json(tmp_path / "m.json", numbers=("top1",)) == {"top1": 0.5}
    # A fraction is a finite number from 0 to 1: 0 and 1 themselves are.
    for text, shown in (('{"top1": 73.5}', "73.5"), ('{"top1": -0.01}', "-0.01"), ('{"top1": NaN}', "nan")):
        (tmp_path / "m.json").write_text(text)
        with pytest.raises(DfnasError, match=rf"m\.json: top1 is {shown} \(not a (fraction from 0 to 1|finite number)\)"):
            read_json(tmp_path / "m.json", fractions=("top1",))
    for value in (0, 1, 0.25):
        (tmp_path / "m.json").write_text(f'{{"top1": {value}}}')
        assert read_json(tmp_path / "m.json", fractions=("top1",)) == {"top1": value}


def test_config_hash_ignores_key_order_only():
    a = {"search": {"lr": 0.1, "epochs": 3, "widths": [8, 16]}, "seed": 0}
    b = {"seed": 0, "search": {"widths": [8, 16], "epochs": 3, "lr": 0.1}}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash({"a": 1}) == "015abd7f5cc57a2d"  # stable across runs and machines
    assert config_hash({**a, "seed": 1}) != config_hash(a)
    assert config_hash({"search": {**a["search"], "widths": [16, 8]}, "seed": 0}) != config_hash(a)  # list order counts


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine where torch sees no CUDA device, and no GPU-allocation variable is set."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for var in (*runtime.GPU_ID_VARIABLES, runtime.GPU_COUNT_VARIABLE):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_auto_device_is_the_cpu_without_gpus(no_gpu):
    assert str(runtime.resolve_device("auto")) == "cpu"
    no_gpu.setenv("CUDA_VISIBLE_DEVICES", "")  # hidden: no GPU given
    no_gpu.setenv(runtime.GPU_COUNT_VARIABLE, "0")
    assert str(runtime.resolve_device("auto")) == "cpu"


@pytest.mark.parametrize("var, value", [("SLURM_JOB_GPUS", "0"), ("CUDA_VISIBLE_DEVICES", "1,2"),
                                        ("SLURM_GPUS_ON_NODE", "1")])
def test_gpus_given_but_invisible_fail_loudly(no_gpu, var, value):
    """A GPU job under a CPU-only torch build must not quietly train on the CPU."""
    no_gpu.setenv(var, value)
    with pytest.raises(DfnasError, match=rf"^this job was given GPUs \({var}={value}\) but torch .* sees none; "
                                         "install a CUDA build of torch"):
        runtime.resolve_device("auto")
    assert str(runtime.resolve_device("cpu")) == "cpu"  # asked for the CPU: fine


def test_cuda_asked_for_without_one_fails(no_gpu):
    with pytest.raises(DfnasError, match="config key 'device': 'cuda' was asked for but this machine has no CUDA"):
        runtime.resolve_device("cuda")


@pytest.fixture
def four_gpus(no_gpu, tmp_path):
    """A faked machine of four CUDA devices (nothing runs on them), its lock folder in tmp_path."""
    import torch

    no_gpu.setattr(torch.cuda, "is_available", lambda: True)
    no_gpu.setattr(torch.cuda, "device_count", lambda: 4)
    no_gpu.setattr(torch.cuda, "set_device", lambda index: None)
    no_gpu.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"uuid-{i}"))
    no_gpu.setattr(runtime, "GPU_WAIT_SECONDS", 0.5)
    no_gpu.setattr(runtime, "configure_backends", lambda device: None)
    no_gpu.setenv(runtime.GPU_LOCK_DIR_VARIABLE, str(tmp_path / "locks"))
    no_gpu.setattr(runtime, "_claimed_gpu", [])
    return no_gpu


def test_parallel_jobs_of_one_machine_get_distinct_gpus(four_gpus):
    """Each job (here: a fresh claim list, as in a new process) takes a GPU no running job holds,
    keeps it for its life, and a fifth job is told how to size Snakemake's gpu resource."""
    held = []
    for expected in range(4):
        device = runtime.resolve_device("auto")
        assert str(device) == f"cuda:{expected}" and runtime.resolve_device("cuda") == device  # kept
        held.append(runtime._claimed_gpu.pop())  # the next "process" starts with no claim
    with pytest.raises(DfnasError, match=r"^all 4 GPUs of this machine stayed held by other dfnas jobs for 0 s "
                                         r"\(locks in .*\); run Snakemake with --resources gpu=4$"):
        runtime.resolve_device("auto")
    held[2][1].close()  # the job on GPU 2 ends
    assert str(runtime.resolve_device("cuda")) == "cuda:2"
    assert str(runtime.resolve_device("cuda:3")) == "cuda:3"  # an explicit index is taken as given


def test_a_job_that_sees_one_gpu_claims_none(four_gpus, tmp_path):
    import torch

    four_gpus.setenv("CUDA_VISIBLE_DEVICES", "2")
    four_gpus.setattr(torch.cuda, "device_count", lambda: 1)
    assert str(runtime.resolve_device("auto")) == "cuda:0" and not runtime._claimed_gpu
    assert not (tmp_path / "locks").exists()


def test_a_job_waits_for_a_gpu_to_come_free(four_gpus, tmp_path):
    import threading

    names = ["a", "b"]
    held = [runtime.claim_gpu(names), runtime._claimed_gpu.pop(), runtime.claim_gpu(names), runtime._claimed_gpu.pop()]
    threading.Timer(0.3, held[3][1].close).start()  # the job on "b" ends while the next one waits
    assert runtime.claim_gpu(names, wait=5.0) == 1


def test_a_gpu_claim_is_held_by_another_process_until_it_ends(four_gpus, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dfnas import runtime; "
                               "print(runtime.claim_gpu(['a', 'b', 'c']), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, runtime.GPU_LOCK_DIR_VARIABLE: str(tmp_path / "locks")})
    assert holder.stdout.readline().strip() == "0"
    assert runtime.claim_gpu(["a", "b", "c"]) == 1
    runtime._claimed_gpu.pop()[1].close()
    holder.communicate("")  # the holder exits: its lock goes with it
    assert runtime.claim_gpu(["a", "b", "c"]) == 0
