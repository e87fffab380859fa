"""The data-free student (dfnas.student): trained on a synthetic variant alone, scored against the
teacher and on natural test images, exported as a torch.export program that runs without dfnas,
resumable."""

import copy
import json
import subprocess
import sys

import h5py
import pytest
import torch

from conftest import assert_resumes_after_a_kill, quiet
from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.fidelity import draw_architectures
from dfnas.imaging import Normalize
from dfnas.spaces import build_architecture, get_space
from dfnas.student import export_program, main, train_student

TINY_SPOS = {"stem": 4, "stem_stride": 1, "stage_blocks": [1, 2], "widths": [8, 16], "last_conv": 32,
             "flops_bound": None}


def student_config(base, **student):
    cfg = copy.deepcopy(base)
    cfg["search"] = {"algorithms": ["spos"], "sources": ["full"], "spos": TINY_SPOS}
    cfg["synthesis"] = {"variants": ["full"]}
    cfg["student"] = {"variant": "full", "epochs": 2, "batch_size": 10, "lr": 0.05, **student}
    return validate_config(cfg)


@pytest.fixture
def arch_file(base_config, tmp_path):
    cfg = student_config(base_config)
    arch = draw_architectures({**cfg, "fidelity": {**cfg["fidelity"], "architectures": 4}}, "spos", (1, 28, 28), 10,
                              log=quiet)[0]
    path = tmp_path / "architecture.json"
    path.write_text(json.dumps(arch))
    return path


def test_student_learns_from_synthetic_images_only(base_config, synthetic_set, arch_file, tmp_path):
    cfg = student_config(base_config)
    out = tmp_path / "student"
    metrics = train_student(cfg, arch_file, *synthetic_set, out, log=quiet)
    # 40 synthetic images: 30 train (3 steps of 10 per epoch), the 10 of the validation split score.
    assert metrics["natural_training_images"] == 0 and metrics["synthetic_training_images"] == 30
    assert metrics["heldout_synthetic_images"] == 10 and len(metrics["history"]) == 2
    assert metrics["test_images"] == 100 and 0 <= metrics["top1"] <= 1
    assert sorted(p.name for p in out.iterdir()) == ["student.pt", "student.pt2"]  # the checkpoint is gone

    # Teacher agreement by hand: the student's top class against the teacher's on the validation split.
    saved = torch.load(out / "student.pt", weights_only=True)
    model = build_architecture(saved["architecture"], 1, 28, 10, saved["sizes"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    dataset, labels = synthetic_set
    with h5py.File(dataset) as d, h5py.File(labels) as s:
        x = torch.from_numpy(d["val/images"][...]).float() / 255
        teacher_top = torch.from_numpy(s["val/logits"][...])[:, 0].argmax(1)
    norm = Normalize(saved["normalization"]["mean"], saved["normalization"]["std"])
    with torch.no_grad():
        agreement = (model(norm(x)).argmax(1) == teacher_top).float().mean().item()
    assert metrics["teacher_agreement"] == pytest.approx(agreement)
    assert metrics["teacher_agreement"] == metrics["history"][-1]["teacher_agreement"]


def test_the_exported_student_runs_without_dfnas(base_config, synthetic_set, arch_file, tmp_path):
    cfg = student_config(base_config, natural_test=False, epochs=1)
    out = tmp_path / "student"
    metrics = train_student(cfg, arch_file, *synthetic_set, out, log=quiet)
    assert "top1" not in metrics and metrics["teacher_agreement"] is not None
    saved = torch.load(out / "student.pt", weights_only=True)
    model = build_architecture(saved["architecture"], 1, 28, 10, saved["sizes"])
    model.load_state_dict(saved["state_dict"])
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model.eval()(x)
    # A fresh interpreter in which importing dfnas fails: only torch loads and runs the file.
    code = ("import sys, torch; sys.modules['dfnas'] = None; "
            f"m = torch.export.load({str(out / 'student.pt2')!r}).module(); x = torch.load({str(tmp_path / 'x.pt')!r}); "
            f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})")
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-5)


@pytest.mark.parametrize("space", ["darts", "spos", "proxyless"])
def test_every_space_exports(space, tmp_path):
    sizes = {"darts": {"cells": 3, "channels": 4, "auxiliary": False}, "spos": {"auxiliary": False},
             "proxyless": {"auxiliary": False}}[space]
    search = {"darts": {}, "spos": TINY_SPOS, "proxyless": {"stem": 4, "first": 4, "stage_blocks": [1, 1],
                                                             "widths": [8, 16], "strides": [2, 2], "feature_mix": 16}}
    cfg = validate_config({"search": {"algorithms": [space], space: search[space]}})
    arch = {"space": space, **get_space(space).random(cfg["search"][space], 0, (1, 28, 28), 10)}
    model = build_architecture(arch, 1, 28, 10, sizes).eval()
    export_program(model, (1, 28, 28), tmp_path / "m.pt2")
    x = torch.randn(5, 1, 28, 28)  # another batch size than the export's example
    with torch.no_grad():
        assert torch.allclose(torch.export.load(tmp_path / "m.pt2").module()(x), model(x), atol=1e-5)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_killed_student_resumes(base_config, synthetic_set, arch_file, tmp_path):
    cfg = student_config(base_config, natural_test=False, epochs=3)

    def run(out_dir, log):
        metrics = train_student(cfg, arch_file, *synthetic_set, out_dir, log=log)
        return metrics["choices"], metrics["history"]

    assert_resumes_after_a_kill(run, tmp_path)


def test_student_config_is_checked(base_config, synthetic_set, arch_file, tmp_path):
    with pytest.raises(DfnasError, match=r"^config key 'student.variant': 'noise' is not in search.sources"):
        student_config(base_config, variant="noise")
    cfg = {k: v for k, v in student_config(base_config).items()}
    cfg["student"] = {**cfg["student"], "variant": None}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "c.json"), "--arch", str(arch_file), "--dataset", str(synthetic_set[0]),
              "--labels", str(synthetic_set[1]), "--out-dir", str(tmp_path / "s")])
