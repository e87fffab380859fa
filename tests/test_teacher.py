"""The teacher stage: every source, the checks against the dataset, and the file it writes."""

import copy
import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from torch import nn

from conftest import quiet
from dfnas.config import validate_config
from dfnas.errors import DfnasError
from dfnas.models import build_model
from dfnas.runtime import sha256_file, sha256_state_dict
from dfnas.teacher import dataset_info, load_teacher, make_teacher
from dfnas.teacher_eval import evaluate_teacher


def with_teacher(cfg, **teacher):
    cfg = copy.deepcopy(cfg)
    cfg["teacher"].update(teacher)
    return validate_config(cfg)


@pytest.fixture
def info(base_config):
    return dataset_info(base_config)


@pytest.fixture
def trained(base_config, info, tmp_path):
    out = tmp_path / "trained" / "teacher.pt"
    make_teacher(base_config, info, out, log=lambda *_: None)
    return out


def test_train_source_learns_and_writes_a_self_describing_file(trained, base_config):
    meta = json.loads(trained.with_suffix(".json").read_text())
    assert meta["format"] == "dfnas-teacher" and meta["source"] == "train"
    assert meta["arch"] == "resnet_cifar"
    assert meta["arch_kwargs"] == {"depth": 8, "width": 4, "num_classes": 10, "in_channels": 1}
    assert meta["input_shape"] == [1, 28, 28] and meta["num_classes"] == 10
    assert meta["normalization"] == {"mean": [0.286], "std": [0.353]}
    assert meta["file_sha256"] == sha256_file(trained)
    assert meta["train_seconds"] > 0
    # The fake classes are bands of light; four short epochs are enough to learn most of them.
    assert meta["train"]["test_top1"] >= 0.5
    teacher = load_teacher(trained)
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert teacher.checksum == sha256_state_dict(teacher.model.state_dict())


def test_same_seed_gives_the_same_file(trained, base_config, info, tmp_path):
    again = tmp_path / "again" / "teacher.pt"
    make_teacher(base_config, info, again, log=lambda *_: None)
    assert sha256_file(again) == sha256_file(trained)
    other = tmp_path / "other" / "teacher.pt"
    make_teacher(validate_config({**copy.deepcopy(base_config), "seed": 1}), info, other, log=lambda *_: None)
    assert sha256_file(other) != sha256_file(trained)


def test_teacher_eval_matches_the_training_record(trained, base_config):
    result = evaluate_teacher(base_config, trained, log=lambda *_: None)
    meta = json.loads(trained.with_suffix(".json").read_text())
    assert result["top1"] == pytest.approx(meta["train"]["test_top1"])
    assert result["images"] == 100 and result["teacher_sha256"] == meta["weights_sha256"]
    assert result["teacher_train_seconds"] == pytest.approx(meta["train_seconds"])


def test_file_source_reloads_a_teacher_file(trained, base_config, info, tmp_path):
    out = tmp_path / "copy" / "teacher.pt"
    record = make_teacher(with_teacher(base_config, source=f"file:{trained}", sha256=sha256_file(trained)), info, out,
                          log=lambda *_: None)
    assert record["weights_sha256"] == load_teacher(trained).checksum
    assert record["source_sha256"] == sha256_file(trained)


def test_file_source_bare_state_dict_from_data_parallel(base_config, info, tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet_cifar", depth=8, width=4, num_classes=10, in_channels=1)
    path = tmp_path / "bare.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    out = tmp_path / "t" / "teacher.pt"
    record = make_teacher(with_teacher(base_config, source=f"file:{path}"), info, out, log=lambda *_: None)
    assert record["weights_sha256"] == sha256_state_dict(model.state_dict())
    assert record["normalization"] == {"mean": [0.286], "std": [0.353]}


def test_url_source_with_right_and_wrong_sha256(trained, base_config, info, tmp_path):
    url = trained.as_uri()
    assert url.startswith("file://")
    good = tmp_path / "good" / "teacher.pt"
    make_teacher(with_teacher(base_config, source=f"url:{url}", sha256=sha256_file(trained)), info, good,
                 log=lambda *_: None)
    assert load_teacher(good).checksum == load_teacher(trained).checksum
    assert sorted(p.name for p in good.parent.iterdir()) == ["teacher.json", "teacher.pt"]

    bad = tmp_path / "bad" / "teacher.pt"
    with pytest.raises(DfnasError, match=r"sha256 is [0-9a-f]{64} but f{64} was expected"):
        make_teacher(with_teacher(base_config, source=f"url:{url}", sha256="f" * 64), info, bad, log=lambda *_: None)
    assert not bad.parent.exists() or not any(bad.parent.iterdir())


def test_url_source_requires_sha256(base_config):
    """Refused by the config check, before any job: the workflow validates the same way."""
    with pytest.raises(DfnasError, match=r"^config key 'teacher.sha256': required for a url: teacher "
                                         r"\(url:file:///nowhere.pt\)"):
        with_teacher(base_config, source="url:file:///nowhere.pt")


def test_unreachable_url_is_one_line(base_config, info, tmp_path):
    with pytest.raises(DfnasError, match="download of file:///nowhere/teacher.pt failed") as err:
        make_teacher(with_teacher(base_config, source="url:file:///nowhere/teacher.pt", sha256="a" * 64), info,
                     tmp_path / "t" / "teacher.pt")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "t" / "teacher.pt").exists()


def test_torchvision_source_uses_the_weights_api(tmp_path, monkeypatch, base_config):
    """torchvision:<model>:<weights> through torchvision's own loader, with the file already in the hub cache."""
    import torchvision

    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / Path(urlparse(weights.url).path).name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    imagenet = {"name": "imagenet", "num_classes": 1000, "class_names": [str(i) for i in range(1000)],
                "input_shape": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    out = tmp_path / "tv" / "teacher.pt"
    record = make_teacher(with_teacher(base_config, source="torchvision:mobilenet_v3_small:IMAGENET1K_V1"), imagenet,
                          out, log=lambda *_: None)
    assert record["arch"] == "torchvision:mobilenet_v3_small"
    assert record["class_names"][0] == "tench"
    assert record["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert record["weights_sha256"] == sha256_state_dict(reference.state_dict())
    teacher = load_teacher(out)
    x = torch.randn(1, 3, 224, 224)
    reference.eval()
    assert torch.allclose(teacher.model(x), reference(x))

    # The same teacher on a 10-class dataset is refused before anything is written.
    with pytest.raises(DfnasError, match="teacher outputs 1000 classes but fashion_mnist has 10"):
        make_teacher(with_teacher(base_config, source=f"file:{out}"),
                     {**imagenet, "name": "fashion_mnist", "num_classes": 10, "input_shape": [3, 224, 224]},
                     tmp_path / "wrong" / "teacher.pt")
    assert not (tmp_path / "wrong").exists()


def test_unknown_torchvision_weights(base_config, info, tmp_path):
    with pytest.raises(DfnasError, match="resnet18 has no weights 'IMAGENET9K' \\(known: IMAGENET1K_V1\\)"):
        make_teacher(with_teacher(base_config, source="torchvision:resnet18:IMAGENET9K"), info, tmp_path / "t.pt")


def test_input_shape_mismatch_is_refused(trained, base_config, info, tmp_path):
    rgb = {**info, "name": "cifar10", "input_shape": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(DfnasError, match=r"teacher does not accept cifar10 inputs of shape \(3, 32, 32\)"):
        make_teacher(with_teacher(base_config, source=f"file:{trained}"), rgb, tmp_path / "x" / "teacher.pt")
    assert not (tmp_path / "x" / "teacher.pt").exists()


def test_teacher_without_batchnorm_is_refused(base_config, info, tmp_path):
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(28 * 28, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    path = tmp_path / "plain.pth"
    torch.save(Plain().state_dict(), path)
    from dfnas import models

    models.register_model("plain", lambda **kw: Plain())
    try:
        cfg = with_teacher(base_config, source=f"file:{path}", arch={"name": "plain", "kwargs": {}})
        with pytest.raises(DfnasError, match="teacher has no BatchNorm layers"):
            make_teacher(cfg, info, tmp_path / "t" / "teacher.pt")
    finally:
        del models.MODELS._items["plain"]


def test_a_teacher_with_nan_weights_is_refused(base_config, info, tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet_cifar", depth=8, width=4, num_classes=10, in_channels=1)
    state = model.state_dict()
    state["fc.weight"][3, 1] = float("nan")
    state["bn1.running_var"][0] = float("inf")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    out = tmp_path / "t" / "teacher.pt"
    with pytest.raises(DfnasError, match=r"^teacher unusable: 2 of its tensors \(bn1.running_var, fc.weight\) hold NaN "
                                         r"or infinite values$"):
        make_teacher(with_teacher(base_config, source=f"file:{path}"), info, out)
    assert not out.exists()


@pytest.mark.parametrize("description, missing", [({}, "input_shape or num_classes"), ("list", "input_shape"),
                                                  ({"input_shape": [1, 28, 28], "num_classes": 10}, "name")])
def test_a_dataset_description_without_what_the_teacher_needs_is_one_line(base_config, info, tmp_path, description,
                                                                         missing):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps([1, 2] if description == "list" else description))
    with pytest.raises(DfnasError) as err:
        dataset_info(base_config, path)
    assert str(err.value).startswith(str(path)) and "delete it and rerun" in str(err.value)
    if description != "list":
        assert f"(no {missing})" in str(err.value)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(info))
    assert dataset_info(base_config, good) == json.loads(json.dumps(info))


@pytest.mark.parametrize("kwargs, reason", [({"depth": 7}, "depth must be 6n+2 with n >= 1, got 7"),
                                            ({"width": 0}, "width must be a positive integer, got 0"),
                                            ({"width": 2.5}, "width must be a positive integer, got 2.5"),
                                            ({"height": 3}, "unexpected keyword argument 'height'")])
def test_architecture_arguments_the_family_lacks_are_one_line(base_config, info, tmp_path, kwargs, reason):
    cfg = with_teacher(base_config, arch={"name": "resnet_cifar", "kwargs": kwargs})
    with pytest.raises(DfnasError, match=r"^architecture 'resnet_cifar': bad arguments \{.*\} \(.*\)$") as err:
        make_teacher(cfg, info, tmp_path / "t" / "teacher.pt", log=quiet)
    assert reason in str(err.value)


def test_state_dict_of_another_architecture(base_config, info, tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(build_model("resnet_cifar", depth=8, width=8, num_classes=10, in_channels=1).state_dict(), path)
    with pytest.raises(DfnasError, match=r"as resnet_cifar: the weights do not fit the architecture \(size mismatch"):
        make_teacher(with_teacher(base_config, source=f"file:{path}"), info, tmp_path / "t" / "teacher.pt")


@pytest.mark.parametrize("content, message", [
    (b"this is not a checkpoint", "not a readable PyTorch checkpoint"),
    (None, "holds neither a dfnas teacher nor a state dict of tensors"),
])
def test_corrupted_or_foreign_files(base_config, info, tmp_path, content, message):
    path = tmp_path / "teacher.pth"
    if content is None:
        torch.save({"epoch": 3, "note": "no weights here"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(DfnasError, match=message):
        make_teacher(with_teacher(base_config, source=f"file:{path}"), info, tmp_path / "t" / "teacher.pt")


def test_load_teacher_detects_tampered_weights(trained, tmp_path):
    obj = torch.load(trained, weights_only=True)
    key = next(k for k in obj["state_dict"] if k.endswith("weight"))
    obj["state_dict"][key] = obj["state_dict"][key] + 1
    tampered = tmp_path / "tampered.pt"
    torch.save(obj, tampered)
    with pytest.raises(DfnasError, match="weights do not match the checksum stored in the file"):
        load_teacher(tampered)
    with pytest.raises(DfnasError, match="not a dfnas teacher file"):
        torch.save(obj["state_dict"], tmp_path / "sd.pt")
        load_teacher(tmp_path / "sd.pt")


@pytest.mark.parametrize("edit, message", [
    ({"arch_kwargs": None}, "an incomplete dfnas teacher file (no valid arch_kwargs); delete it and rerun"),
    ({"num_classes": 7}, "teacher outputs 10 classes but its own record has 7; delete it and rerun"),
    ({"input_shape": [3, 28, 28]}, "teacher does not accept its own record inputs of shape (3, 28, 28)"),
])
def test_a_teacher_file_whose_record_disagrees_with_its_network_is_refused(trained, base_config, info, tmp_path,
                                                                           edit, message):
    obj = torch.load(trained, weights_only=True)
    obj.update(edit)
    edited = tmp_path / "edited.pt"
    torch.save(obj, edited)
    with pytest.raises(DfnasError) as err:
        load_teacher(edited)
    assert str(err.value).startswith(f"{edited}: ") and message in str(err.value)
    if "arch_kwargs" in edit:  # also as a file: source of the teacher stage
        with pytest.raises(DfnasError, match="an incomplete dfnas teacher file"):
            make_teacher(with_teacher(base_config, source=f"file:{edited}"), info, tmp_path / "t" / "teacher.pt")


def test_missing_file_source(base_config, info, tmp_path):
    with pytest.raises(DfnasError, match="file /does/not/exist.pt does not exist"):
        make_teacher(with_teacher(base_config, source="file:/does/not/exist.pt"), info, tmp_path / "t.pt")
    with pytest.raises(DfnasError, match=f"file {tmp_path} is a folder, not a checkpoint file$"):
        make_teacher(with_teacher(base_config, source=f"file:{tmp_path}"), info, tmp_path / "t.pt")


def test_killed_training_resumes_from_its_last_epoch(trained, base_config, info, tmp_path):
    class Killed(Exception):
        pass

    def kill_after_epoch_2(msg):
        if msg.startswith("epoch 2/4"):
            raise Killed

    out = tmp_path / "killed" / "teacher.pt"
    with pytest.raises(Killed):
        make_teacher(base_config, info, out, log=kill_after_epoch_2)
    checkpoint = out.with_name("teacher.pt.ckpt")
    assert checkpoint.exists() and not out.exists()
    messages = []
    make_teacher(base_config, info, out, log=messages.append)
    assert f"resuming from {checkpoint} after epoch 2" in messages
    assert [m[:9] for m in messages if m.startswith("epoch")] == ["epoch 3/4", "epoch 4/4"]
    assert sha256_file(out) == sha256_file(trained)
    assert not checkpoint.exists()


def test_a_teacher_for_another_class_count_than_the_image_folder_is_refused(teacher_file, tmp_path):
    from dfnas.example_data import write_image_folder

    root = write_image_folder(tmp_path / "tree", classes=3, train_per_class=2, test_per_class=1, size=28)
    cfg = validate_config({"device": "cpu", "data": {"name": "folder", "root": str(root), "channels": 1,
                                                     "input_size": 28, "mean": [0.5], "std": [0.25]},
                           "teacher": {"source": f"file:{teacher_file}"}})
    with pytest.raises(DfnasError, match=f"teacher outputs 10 classes but the image folder {root} has 3"):
        make_teacher(cfg, dataset_info(cfg), tmp_path / "t.pt", log=quiet)
