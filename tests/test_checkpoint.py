"""Checkpoints of training loops (dfnas.checkpoint): what a save brings back, and the files a loop
must not resume from (another run's, a truncated one)."""

import torch
from torch import nn

from dfnas.checkpoint import Checkpoint, Resumed


def a_loop(seed: int):
    """A model and an optimizer with state (one momentum step), and a generator drawn from."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(seed)
    torch.rand(5, generator=gen)
    return model, opt, gen


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_save_brings_back_every_state_history_and_extra(tmp_path):
    model, opt, gen = a_loop(0)
    path = tmp_path / "ckpt.pt"
    Checkpoint(path, {"seed": 0, "lr": 0.1}, log=None).save({"model": model, "opt": opt}, gen,
                                                            [{"epoch": 1, "loss": 0.5}], 1, step=7, phase="warmup")
    global_draw = torch.rand(3)  # the draws right after the save
    next_draw = torch.rand(3, generator=gen)

    other_model, other_opt, other_gen = a_loop(1)
    assert not same_weights(model, other_model)
    messages = []
    torch.manual_seed(5)
    # The same fingerprint, its keys in another order.
    resumed = Checkpoint(path, {"lr": 0.1, "seed": 0}, messages.append).resume(
        {"model": other_model, "opt": other_opt}, other_gen)
    assert torch.equal(torch.rand(3), global_draw)  # torch's global generator is back where it was at the save
    assert resumed == Resumed([{"epoch": 1, "loss": 0.5}], 1, {"step": 7, "phase": "warmup"})
    assert messages == [f"resuming from {path} after epoch 1"]
    assert same_weights(model, other_model)
    buffers = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(torch.equal(a, other_opt.state[p]["momentum_buffer"]) for a, p in zip(buffers,
                                                                                     other_model.parameters()))
    # So is the loop's generator.
    assert torch.equal(torch.rand(3, generator=other_gen), next_draw)


def test_no_file_starts_afresh_silently(tmp_path):
    model, opt, gen = a_loop(0)
    messages = []
    assert Checkpoint(tmp_path / "none.pt", {}, messages.append).resume({"model": model}, gen) == Resumed([], 0, {})
    assert messages == []


def test_another_runs_checkpoint_is_ignored(tmp_path):
    model, opt, gen = a_loop(0)
    path = tmp_path / "ckpt.pt"
    made_from = {"seed": 0, "search": {"lr": 0.1, "epochs": 4}, "dataset_sha256": "aa", "teacher_sha256": "cc"}
    Checkpoint(path, made_from).save({"model": model, "opt": opt}, gen, [{"epoch": 1}], 1)
    other_model, other_opt, other_gen = a_loop(1)
    before = {k: v.clone() for k, v in other_model.state_dict().items()}
    gen_state = other_gen.get_state()
    messages = []
    # New images (a synthesis key changed) and another learning rate: the line names both.
    now = {**made_from, "search": {"lr": 0.2, "epochs": 4}, "dataset_sha256": "bb"}
    resumed = Checkpoint(path, now, messages.append).resume({"model": other_model, "opt": other_opt}, other_gen)
    assert resumed == Resumed()
    assert messages == [f"ignoring {path}: it was made from other inputs (dataset_sha256, search.lr); starting afresh"]
    assert all(torch.equal(before[k], v) for k, v in other_model.state_dict().items())
    assert torch.equal(other_gen.get_state(), gen_state)


def test_a_truncated_checkpoint_is_ignored_with_a_log_line(tmp_path):
    model, opt, gen = a_loop(0)
    path = tmp_path / "ckpt.pt"
    checkpoint = Checkpoint(path, {"seed": 0})
    checkpoint.save({"model": model, "opt": opt}, gen, [{"epoch": 1}], 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    messages = []
    other_model, other_opt, other_gen = a_loop(1)
    before = {k: v.clone() for k, v in other_model.state_dict().items()}
    resumed = Checkpoint(path, {"seed": 0}, messages.append).resume({"model": other_model, "opt": other_opt},
                                                                    other_gen)
    assert resumed == Resumed()
    assert len(messages) == 1 and messages[0].startswith(f"ignoring unreadable {path} (")
    assert messages[0].endswith("): starting afresh")
    assert all(torch.equal(before[k], v) for k, v in other_model.state_dict().items())
    checkpoint.remove()
    assert not path.exists()
    checkpoint.remove()  # removing twice is fine


def test_a_checkpoint_without_its_inputs_is_ignored_with_a_general_line(tmp_path):
    """A checkpoint whose inputs cannot be read back (an older file) still never resumes another run."""
    from dfnas.runtime import save_torch

    model, opt, gen = a_loop(0)
    path = tmp_path / "ckpt.pt"
    save_torch({"fingerprint": "0123", "model": model.state_dict(), "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "history": [], "epoch": 1}, path)
    messages = []
    assert Checkpoint(path, {"seed": 0}, messages.append).resume({"model": model}, gen) == Resumed()
    assert messages == [f"ignoring {path}: it was made from other inputs (config, data or seed); starting afresh"]


def test_a_checkpoint_of_another_shape_is_ignored_before_anything_loads(tmp_path):
    """The same fingerprint but tensors of other shapes (an architecture whose description did not
    change but whose network did): nothing is loaded, the loop starts afresh."""
    model, opt, gen = a_loop(0)
    path = tmp_path / "ckpt.pt"
    Checkpoint(path, {"seed": 0}).save({"model": model, "opt": opt}, gen, [{"epoch": 1}], 1)
    wider = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    messages = []
    resumed = Checkpoint(path, {"seed": 0}, messages.append).resume(
        {"model": wider, "opt": torch.optim.SGD(wider.parameters(), lr=0.1)}, torch.Generator())
    assert resumed == Resumed()
    assert messages == [f"ignoring {path}: its model has other tensors than this one; starting afresh"]
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())


def test_saves_keep_the_interval_and_always_save_the_last_epoch(tmp_path, monkeypatch):
    import dfnas.checkpoint as ck

    model, opt, gen = a_loop(0)
    stateful, path = {"model": model, "opt": opt}, tmp_path / "ckpt.pt"
    now = [1000.0]
    monkeypatch.setattr(ck.time, "monotonic", lambda: now[0])
    monkeypatch.setenv("DFNAS_CHECKPOINT_SECONDS", "600")
    ckpt = Checkpoint(path, {"seed": 0}, log=None)  # the loop starts at t = 1000 s
    saved = []
    for epoch, t in enumerate([1100, 1599, 1600, 2199, 2200, 2250], start=1):
        now[0] = float(t)
        if ckpt.save(stateful, gen, [], epoch, final=epoch == 6):
            saved.append((epoch, torch.load(path, weights_only=True)["epoch"]))
    # 600 s after the start, 600 s after that save, and the last epoch whatever the clock says.
    assert saved == [(3, 3), (5, 5), (6, 6)]

    monkeypatch.setenv("DFNAS_CHECKPOINT_SECONDS", "0")
    ckpt = Checkpoint(tmp_path / "every.pt", {"seed": 0}, log=None)
    assert all(ckpt.save(stateful, gen, [], epoch) for epoch in (1, 2, 3))


def test_a_bad_interval_is_one_line(monkeypatch):
    import pytest

    from dfnas.errors import DfnasError

    for raw in ("ten", "-5", "nan"):
        monkeypatch.setenv("DFNAS_CHECKPOINT_SECONDS", raw)
        with pytest.raises(DfnasError, match=rf"^DFNAS_CHECKPOINT_SECONDS='{raw}': expected a number of seconds >= 0$"):
            Checkpoint("unused.pt", {"seed": 0}, log=None)


def test_the_generators_of_the_gpus_a_job_used_are_saved_and_restored(tmp_path, monkeypatch):
    """With CUDA initialized (faked here: two GPUs), a save keeps every GPU's generator state and a
    resume on as many GPUs sets them back; a CPU job's checkpoint holds none and sets none."""
    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    model, opt, gen = a_loop(0)
    path = tmp_path / "ckpt.pt"
    Checkpoint(path, {"seed": 0}, log=None).save({"model": model, "opt": opt}, gen, [], 1)
    saved = torch.load(path, weights_only=True)["cuda_rng"]
    assert all(torch.equal(a, b) for a, b in zip(saved, states)) and len(saved) == 2
    Checkpoint(path, {"seed": 0}, log=lambda *_: None).resume({"model": model, "opt": opt}, gen)
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], states))
    # Resumed where another number of GPUs is visible: the states do not fit, and are left alone.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    Checkpoint(path, {"seed": 0}, log=lambda *_: None).resume({"model": model, "opt": opt}, gen)
    assert len(restored) == 1
    # One rank of a torchrun job neither restores nor saves them: rank 0 knows its own GPU's alone.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    Checkpoint(path, {"seed": 0}, log=lambda *_: None).resume({"model": model, "opt": opt}, gen)
    assert len(restored) == 1
    Checkpoint(path, {"seed": 0}, log=None).save({"model": model, "opt": opt}, gen, [], 1, final=True)
    assert "cuda_rng" not in torch.load(path, weights_only=True)
    monkeypatch.delenv("WORLD_SIZE")
    # A job that never touched CUDA saves no GPU state.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    Checkpoint(path, {"seed": 0}, log=None).save({"model": model, "opt": opt}, gen, [], 1, final=True)
    assert "cuda_rng" not in torch.load(path, weights_only=True)
