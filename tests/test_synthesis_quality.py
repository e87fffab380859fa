"""The synthesis_quality stage's data-efficiency score and its shared natural reference."""

import copy

import pytest

from conftest import quiet
from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.synthesis_quality import natural_reference, quality
from dfnas.teacher import load_teacher


def test_the_natural_reference_is_made_once_and_checked(synthetic_set, teacher_file, base_config):
    cfg = copy.deepcopy(base_config)
    cfg["quality"] = {"student": {"steps": 6, "batch_size": 8}}
    cfg = validate_config(cfg)
    teacher = load_teacher(teacher_file)
    dataset, _ = synthetic_set
    reference = natural_reference(cfg, teacher, 30, log=quiet)
    assert reference["images"] == 30 and 0 <= reference["top1"] <= 1
    result = quality(cfg, teacher, dataset, log=quiet, reference=reference)
    student = result["student"]
    assert result["train_images"] == 30
    assert student["natural_reference_top1"] == reference["top1"]
    assert student["data_efficiency"] == pytest.approx(student["synthetic_top1"] / reference["top1"])
    # Without a reference file the stage distills the same reference itself (same seed, same number).
    inline = quality(cfg, teacher, dataset, log=quiet)["student"]
    assert inline["natural_reference_top1"] == reference["top1"]
    assert inline["synthetic_top1"] == student["synthetic_top1"]
    with pytest.raises(DfnasError, match="natural reference \\(29 images\\) was not made for this variant's 30"):
        quality(cfg, teacher, dataset, log=quiet, reference={**reference, "images": 29})
