"""The synthesis_quality stage: its metrics against hand values (entropy, per-round statistics,
within-class diversity), its data-efficiency score and the shared natural reference."""

import copy
import math

import numpy as np
import pytest
import torch

from conftest import quiet
from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.synthesis_quality import entropy, natural_reference, quality, round_statistics, within_class_diversity
from dfnas.teacher import load_teacher


def test_entropy_in_nats_by_hand():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0],
                          [0.5, 0.25, 0.125, 0.125]])
    expected = [math.log(4), 0.0, math.log(2), 1.75 * math.log(2)]
    assert entropy(probs).tolist() == pytest.approx(expected, abs=1e-6)


def test_round_statistics_on_hand_made_arrays():
    ln = math.log
    arrays = {
        # softmax rows: (1/2, 1/6, 1/6, 1/6), (1/4, 1/2, 1/8, 1/8), (1/6, 1/6, 1/6, 1/2)
        "teacher_logits": np.array([[ln(3), 0, 0, 0], [ln(2), ln(4), 0, 0], [0, 0, 0, ln(3)]], np.float32),
        "targets": np.array([[1, 0, 0, 0], [0.25, 0.75, 0, 0], [0, 1, 0, 0]], np.float32),
        "round": np.array([0, 1, 0], np.int16),  # rounds need not be contiguous
    }
    rows = round_statistics(arrays)
    assert [(r["round"], r["images"]) for r in rows] == [(0, 2), (1, 1)]
    h_sixths = 0.5 * ln(2) + 0.5 * ln(6)  # entropy of (1/2, 1/6, 1/6, 1/6)
    assert rows[0]["teacher_confidence"] == pytest.approx(0.5)
    assert rows[0]["soft_label_entropy"] == pytest.approx(h_sixths, rel=1e-6)
    assert rows[0]["target_entropy"] == pytest.approx(0.0, abs=1e-6)  # one-hot targets
    assert rows[0]["teacher_agrees_with_target_class"] == 0.5  # image 0 agrees (class 0), image 2 does not
    assert rows[1]["teacher_confidence"] == pytest.approx(0.5)
    assert rows[1]["soft_label_entropy"] == pytest.approx(1.75 * ln(2), rel=1e-6)
    assert rows[1]["target_entropy"] == pytest.approx(0.25 * ln(4) + 0.75 * ln(4 / 3), rel=1e-6)
    assert rows[1]["teacher_agrees_with_target_class"] == 1.0


def test_within_class_diversity_is_the_mean_pairwise_cosine_distance():
    features = torch.tensor([[1.0, 0.0], [3.0, 3.0],  # class 0: 45 degrees apart
                             [1.0, 0.0], [2.0, 0.0], [0.0, 3.0],  # class 1: pairs at 0, 90 and 90 degrees
                             [5.0, 5.0]])  # class 2: a single image, no pair
    labels = np.array([0, 0, 1, 1, 1, 2])
    class0 = 1 - 1 / math.sqrt(2)
    class1 = 1 - (1 + 0 + 0) / 3
    assert within_class_diversity(features, labels) == pytest.approx((class0 + class1) / 2, rel=1e-6)
    assert within_class_diversity(features[:2], labels[:2]) == pytest.approx(class0, rel=1e-6)
    assert within_class_diversity(features[[0, 0]], np.array([4, 4])) == pytest.approx(0.0, abs=1e-6)  # identical
    assert math.isnan(within_class_diversity(features[[0, 2]], np.array([0, 1])))  # no class has a pair


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
