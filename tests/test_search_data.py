"""The data a search sees (dfnas.search_data): the two parts of a natural subset or of a synthetic set,
their batches, the held-out evaluation, and the fingerprint a search's checkpoint must match."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.losses import kd_loss
from dfnas.runtime import sha256_file
from dfnas.search_data import SearchData


def natural_config(base_config, **search):
    cfg = copy.deepcopy(base_config)
    cfg["search"] = {"natural_images": 40, **search}
    return validate_config(cfg)


def synthetic_config():
    return validate_config({"device": "cpu"})


def test_natural_source_splits_a_balanced_subset(base_config):
    cfg = natural_config(base_config)
    data = SearchData(cfg, "natural", 0, train_portion=0.75)
    assert not data.synthetic and data.images == 40
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    train, held = data.halves
    assert (len(train), len(held)) == (30, 10)
    assert sorted(torch.cat([train, held]).tolist()) == list(range(40))
    split = data.data.split
    labels = torch.as_tensor(split.targets)
    assert np.bincount(split.targets).tolist() == [4] * 10  # 40 images of 10 classes
    assert torch.equal(SearchData(cfg, "natural", 0, train_portion=0.75).halves[0], train)
    assert not torch.equal(SearchData(cfg, "natural", 1, train_portion=0.75).halves[0], train)
    # Training batches: whole batches only (30 images: 3 of 8), normalized, with their labels.
    batches = list(data.batches(0, 8, torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [8, 8, 8]
    assert all(x.shape == (8, 1, 28, 28) for x, _ in batches)
    assert set(torch.cat([y for _, y in batches]).tolist()) <= set(labels[train].tolist())
    # The held-out part: in order, whole and unaugmented, with the labels as classes.
    xs, ys = zip(*data.heldout_batches(4))
    assert [len(y) for y in ys] == [4, 4, 2]
    torch.testing.assert_close(torch.cat(xs), data.norm(split.images[held].float() / 255))
    assert torch.equal(data.labels_of(torch.cat(ys)), labels[held])


class PathNet(nn.Module):
    """A stand-in supernet: a linear classifier that records the paths it is run with."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)
        self.paths = []

    def forward(self, x, path):
        self.paths.append(path)
        return self.linear(x.flatten(1))


def test_natural_evaluation_is_cross_entropy_and_accuracy_of_a_path(base_config):
    data = SearchData(natural_config(base_config), "natural", 0, train_portion=0.75, label_smoothing=0.1)
    torch.manual_seed(0)
    model = PathNet()
    scores = data.evaluate(model, "cpu", 4, path=(2, 1))
    assert model.paths == [(2, 1)] * 3 and model.training
    x, y = map(torch.cat, zip(*data.heldout_batches(10)))
    with torch.no_grad():
        logits = model.linear(x.flatten(1))
    assert scores["val_acc"] == int((logits.argmax(1) == y).sum()) / 10
    assert scores["val_loss"] == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-5)


def test_synthetic_source_holds_out_a_portion_or_the_validation_split(synthetic_set):
    cfg = synthetic_config()
    portion = SearchData(cfg, "full", 0, *synthetic_set, train_portion=0.5)
    assert portion.synthetic and portion.images == 30  # the merged set's training split
    assert [len(h) for h in portion.halves] == [15, 15] and portion.heldout is portion.data
    val = SearchData(cfg, "full", 0, *synthetic_set, synthetic_holdout="val")
    assert val.images == 40 and [len(h) for h in val.halves] == [30, 10]  # training split, validation split
    assert len(val.heldout) == 10 and val.heldout.views == 1
    assert val.input_shape == (1, 28, 28) and val.num_classes == 10
    # Batches replay cached views with the teacher's logits; a class is the logits' argmax.
    x, logits = next(val.batches(0, 8, torch.Generator().manual_seed(0)))
    assert x.shape == (8, 1, 28, 28) and logits.shape == (8, 10)
    assert torch.equal(val.labels_of(logits), logits.argmax(1))


def test_views_rendered_on_the_device_are_the_streamed_ones(synthetic_set):
    """With a device, a synthetic source reads its stored (uint8) images and renders the cached
    views there: for the same generator the batches equal those rendered at read time, and the
    bytes read are the stored ones, a quarter of the float pixels."""
    plain = SearchData(synthetic_config(), "full", 0, *synthetic_set, synthetic_holdout="val")
    on_device = SearchData(synthetic_config(), "full", 0, *synthetic_set, synthetic_holdout="val", device="cpu")
    on_device.data.read = None  # rendered views are not what this one reads
    batches = [list(d.batches(0, 4, torch.Generator().manual_seed(5))) for d in (plain, on_device)]
    assert len(batches[0]) == len(batches[1]) >= 2
    for (x, t), (xd, td) in zip(*batches):
        assert torch.equal(x, xd) and torch.equal(t, td)
    stored, boxes, flips, alphas, target = on_device.data.read_stored([0, 1, 2], torch.Generator().manual_seed(1))
    assert stored.dtype == torch.uint8 and stored.shape == (3, 1, 28, 28) and boxes.shape == (3, 4)
    x, t = plain.data.read([0, 1, 2], torch.Generator().manual_seed(1))
    assert torch.equal(t, target) and not torch.equal(boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3))


def test_recalibration_batches_are_held_under_their_byte_budget_and_drawn_again_above_it(synthetic_set):
    """Three batches of 8 images of 1 x 28 x 28 take 3 * 8 * 784 * 4 = 75,264 bytes as float32: held
    at that budget (drawn once), drawn again from the seed at every pass one byte below it (nothing
    read ahead), and the same batches either way, pass after pass."""
    data = SearchData(synthetic_config(), "full", 0, *synthetic_set, synthetic_holdout="val")
    passes = []
    real = data.batches
    data.batches = lambda *a, **k: passes.append(a) or real(*a, **k)
    held = data.recalibration_batches(3, 8, 0, max_bytes=3 * 8 * 784 * 4)
    assert held.held is not None and len(passes) == 1
    kept = list(held)
    assert len(kept) == 3 and all(x.shape == (8, 1, 28, 28) for x in kept) and list(held) == kept
    assert len(passes) == 1  # iterating held batches reads nothing
    drawn = data.recalibration_batches(3, 8, 0, max_bytes=3 * 8 * 784 * 4 - 1)
    assert drawn.held is None and len(passes) == 1
    for _ in range(2):
        again = list(drawn)
        assert len(again) == 3 and all(torch.equal(a, b) for a, b in zip(again, kept))
    assert len(passes) == 3
    # Fewer than a pass has: the first ones of the same pass, and no more, held or drawn.
    for budget in (0, 1 << 20):
        two = list(data.recalibration_batches(2, 8, 0, max_bytes=budget))
        assert len(two) == 2 and all(torch.equal(a, b) for a, b in zip(two, kept))
    # Another seed draws other batches.
    other = list(data.recalibration_batches(3, 8, 1, max_bytes=0))
    assert not torch.equal(other[0], kept[0])


def test_synthetic_evaluation_is_distillation_loss_and_agreement(synthetic_set):
    data = SearchData(synthetic_config(), "full", 0, *synthetic_set, synthetic_holdout="val")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    scores = data.evaluate(model, "cpu", 3)  # batches of 3, 3, 3 and 1
    x, t = map(torch.cat, zip(*data.heldout_batches(100)))
    assert len(x) == 10
    with torch.no_grad():
        logits = model(x)
    assert scores["val_acc"] == int((logits.argmax(1) == t.argmax(1)).sum()) / 10
    assert scores["val_loss"] == pytest.approx(kd_loss(logits, t, data.temperature).item(), rel=1e-5)
    assert model.training


def test_fingerprint_names_the_data_a_checkpoint_belongs_to(base_config, synthetic_set):
    natural = SearchData(natural_config(base_config), "natural", 0)
    fp = natural.fingerprint(0)
    assert {k: fp[k] for k in ("source", "seed", "images", "temperature")} == {
        "source": "natural", "seed": 0, "images": 40, "temperature": 3.0}
    assert fp["data"]["name"] == "fashion_mnist" and fp["data"]["source"].startswith(base_config["data"]["root"])
    assert natural.fingerprint(1) != natural.fingerprint(0)
    # A subset of the split, and the same subset drawn with another seed (other images of the same
    # count), make other fingerprints.
    subset = copy.deepcopy(base_config)
    subset["data"]["subset"] = {"train": 60}
    drawn = SearchData(natural_config(subset), "natural", 0).fingerprint(0)
    assert drawn["data"] != fp["data"] and drawn["data"]["train_size"] == 60
    subset["seed"] = 1
    redrawn = SearchData(natural_config(subset), "natural", 0).fingerprint(0)
    assert redrawn["data"]["train_size"] == 60 and redrawn != drawn
    synthetic = SearchData(synthetic_config(), "full", 0, *synthetic_set)
    fp = synthetic.fingerprint(0)
    assert fp["source"] == "full" and fp["images"] == 30
    assert fp["dataset_sha256"] == sha256_file(synthetic_set[0]) and fp["teacher_sha256"] and fp["config_hash"]
    held_out_val = SearchData(synthetic_config(), "full", 0, *synthetic_set, synthetic_holdout="val")
    assert held_out_val.fingerprint(0)["images"] == 40


@pytest.mark.parametrize("search", [{"train_portion": 0.75}, {"t_squared": False}, {"crop_padding": 0},
                                    {"flip": False}, {"channels_last": False}],
                         ids=lambda s: next(iter(s)))
def test_every_shared_search_key_that_changes_a_search_changes_its_fingerprint(base_config, search):
    """The shared `search` keys are part of every search job's config: a job rerun after one changed
    must not resume a checkpoint made under the old value."""
    before = SearchData(natural_config(base_config), "natural", 0).fingerprint(0)
    after = SearchData(natural_config(base_config, **search), "natural", 0).fingerprint(0)
    assert after != before
    assert SearchData(natural_config(base_config), "natural", 0, label_smoothing=0.1).fingerprint(0) != before
    views = copy.deepcopy(base_config)
    views["data"]["crop_scale"] = [0.25, 1.0]
    assert SearchData(natural_config(views), "natural", 0).fingerprint(0)["data"] != before["data"]


def test_missing_files_and_empty_parts_are_one_line_errors(base_config):
    with pytest.raises(DfnasError, match=r"^source 'full' needs --dataset and --labels \(its synthetic set and soft "
                                         r"labels\)$"):
        SearchData(synthetic_config(), "full", 0)
    with pytest.raises(DfnasError, match=r"^train_portion 1\.0 leaves an empty part of 40 images$"):
        SearchData(natural_config(base_config), "natural", 0, train_portion=1.0)


def test_top_k_soft_labels_are_distilled_as_cached_not_tempered_again(synthetic_set, teacher_file, tmp_path):
    """A top-k cache holds the teacher's softmax at T (the rest of the mass spread evenly); the search
    matches exactly that distribution, and refuses to distil at another temperature."""
    from dfnas.soft_labels import make_soft_labels
    from dfnas.teacher import load_teacher

    dataset, _ = synthetic_set
    teacher = load_teacher(teacher_file)
    cfg = validate_config({"device": "cpu", "soft_labels": {"views": 1, "topk": 3, "temperature": 2.0},
                           "search": {"temperature": 2.0}})
    make_soft_labels(cfg, teacher, dataset, tmp_path / "topk.h5", log=lambda *_: None)
    data = SearchData(cfg, "full", 0, dataset, tmp_path / "topk.h5", synthetic_holdout="val")
    x, target = next(iter(data.heldout_batches(4)))
    with torch.no_grad():
        t_probs = F.softmax(teacher.model(x) / 2.0, 1)  # x is normalized with the teacher's statistics
    top = t_probs.topk(3, 1)
    cached = torch.full_like(t_probs, 0.0)
    cached += ((1 - top.values.sum(1, keepdim=True)) / 7)  # the other 7 classes share the rest
    cached.scatter_(1, top.indices, top.values)
    assert torch.allclose(target.exp(), cached, atol=2e-3)  # float16 cache
    student = torch.zeros(len(x), 10)  # uniform: the distance to it is the target's own sharpness
    by_hand = (cached * (cached.log() - F.log_softmax(student / 2.0, 1))).sum(1).mean() * 4.0
    assert data.loss_from_logits(student, target).item() == pytest.approx(by_hand.item(), rel=5e-3)
    retempered = kd_loss(student, target, 2.0)  # what tempering the cached log-probabilities again gives
    assert abs(retempered.item() - by_hand.item()) > 0.05 * by_hand.item()  # ten times the tolerance above
    no_t2 = validate_config({**cfg, "search": {"temperature": 2.0, "t_squared": False}})
    plain = SearchData(no_t2, "full", 0, dataset, tmp_path / "topk.h5", synthetic_holdout="val")
    assert plain.loss_from_logits(student, target).item() == pytest.approx(by_hand.item() / 4.0, rel=5e-3)
    other = validate_config({**cfg, "search": {"temperature": 4.0}})
    with pytest.raises(DfnasError, match=r"topk.h5: its top-k soft labels were cached at temperature 2 "
                                         r"\(soft_labels.temperature\), the search distils at search.temperature 4"):
        SearchData(other, "full", 0, dataset, tmp_path / "topk.h5")


def test_fixed_batches_are_held_on_a_gpu_up_to_a_quarter_of_its_memory(monkeypatch):
    """Host memory holds up to 2 GiB of them; a GPU a quarter of its memory, 16 GiB at most (a
    16-GiB card: 4 GiB; an 80-GiB one: 16 GiB)."""
    import types

    from dfnas import search_data

    assert search_data.hold_budget(None) == search_data.hold_budget("cpu") == 2 << 30
    for total, budget in ((16 << 30, 4 << 30), (80 << 30, 16 << 30)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d, t=total: types.SimpleNamespace(total_memory=t))
        assert search_data.hold_budget("cuda:0") == budget


@pytest.mark.parametrize("source", ["natural", "full"])
def test_a_held_out_part_kept_as_stored_gives_the_streamed_batches(source, base_config, synthetic_set):
    """Kept on the device as stored (uint8 pixels, 1 byte each, and float32 targets), the held-out
    part gives at every pass exactly the normalized batches that streaming it gives; one byte over
    its budget it is not kept."""
    if source == "natural":
        data = SearchData(natural_config(base_config), "natural", 0, train_portion=0.5)  # 20 held out
    else:
        data = SearchData(synthetic_config(), "full", 0, *synthetic_set, synthetic_holdout="val")  # 10 held out
    per_image = 784 + 10 * 4  # 28 x 28 pixels and a row of 10 class scores (a natural label: less)
    n = len(data.halves[1])
    assert data.heldout_on("cpu", 8, n * per_image - 1) is None
    held = data.heldout_on("cpu", 8, n * per_image)
    assert held is not None and all(batch[0].dtype == torch.uint8 for batch in held.held)
    streamed = list(data.heldout_batches(8))
    for _ in range(2):
        again = list(held)
        assert len(again) == len(streamed) == -(-n // 8)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, streamed))
