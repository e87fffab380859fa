"""Every stage runs by hand as python -m dfnas.<stage>, with --help and one-line errors."""

import pytest
import yaml

from conftest import run_cli

STAGES = ["dfnas.data", "dfnas.teacher", "dfnas.teacher_eval", "dfnas.synthesize", "dfnas.merge", "dfnas.soft_labels",
          "dfnas.synthesis_quality", "dfnas.search", "dfnas.retrain", "dfnas.student", "dfnas.ranking",
          "dfnas.supernet_test", "dfnas.report"]


@pytest.mark.parametrize("module", STAGES)
def test_help(module):
    result = run_cli(module, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: python -m {module}" in result.stdout
    assert "--config" in result.stdout


def test_bad_config_is_one_line_and_writes_nothing(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"train": {"epochs": 0}}}))
    out = tmp_path / "teacher.pt"
    result = run_cli("dfnas.teacher", "--config", str(cfg), "--out", str(out))
    assert result.returncode == 2
    assert result.stderr == "dfnas: error: config key 'teacher.train.epochs': 0 is less than the minimum of 1\n"
    assert not out.exists()


def test_data_stage_describes_the_dataset(tmp_path, fake_fmnist):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"root": str(fake_fmnist), "subset": {"train": 100}}}))
    out = tmp_path / "dataset.json"
    result = run_cli("dfnas.data", "--config", str(cfg), "--out", str(out))
    assert result.returncode == 0, result.stderr
    import json

    info = json.loads(out.read_text())
    assert info["train_size"] == 100 and info["test_size"] == 100
    assert info["input_shape"] == [1, 28, 28] and info["num_classes"] == 10
    assert info["source"] == str(fake_fmnist / "fashion-mnist")
    assert "fashion_mnist: 100 train / 100 test images" in result.stdout


def test_missing_dataset_through_the_cli(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"name": "mnist", "root": str(tmp_path / "none"), "download": False}}))
    result = run_cli("dfnas.data", "--config", str(cfg))
    assert result.returncode == 2
    assert result.stderr.startswith("dfnas: error: dataset mnist not found; looked in: ")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("module, args, given, clash", [
    ("dfnas.merge", ["--teacher", "t.pt", "--shards", "a/shard_000.h5", "a/shard_001.h5"], "a/shard_000.h5",
     "shards"),
    ("dfnas.soft_labels", ["--teacher", "t.pt", "--dataset", "a/dataset.h5"], "a/dataset.h5", "dataset"),
    ("dfnas.teacher", ["--source", "file:t.pt"], "file:t.pt", "source"),
])
def test_an_output_that_is_also_an_input_is_refused_and_the_input_kept(tmp_path, module, args, given, clash):
    (tmp_path / "a").mkdir()
    for name in ("a/shard_000.h5", "a/shard_001.h5", "a/dataset.h5", "t.pt"):
        (tmp_path / name).write_bytes(b"an input")
    out = given.removeprefix("file:")
    result = run_cli(module, "--config-json", '{"device": "cpu"}', *args, "--out", out, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (f"dfnas: error: --out {out} is also the input --{clash} {given}; writing it would "
                             "destroy that input: name another output\n")
    assert (tmp_path / out).read_bytes() == b"an input"
