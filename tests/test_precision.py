"""The ``precision`` key: which arithmetic each device gets, and bfloat16 (CPU autocast here; the
same code path runs on CUDA) against float32 within stated tolerances."""

import pytest
import torch
import torch.nn.functional as F

from dfnas.data import TensorImages
from dfnas.errors import DfnasError
from dfnas.runtime import autocast_forward, resolve_precision
from dfnas.spaces.darts import SearchNetwork
from dfnas.train import Recipe, train_classifier


def test_auto_is_float32_on_the_cpu_and_bf16_is_asked_for_by_name():
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("bf16", "cpu") is torch.bfloat16
    with pytest.raises(DfnasError, match="config key 'precision': 'fp16' is not one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")


def test_a_darts_search_is_float32_under_auto_on_any_device():
    """DARTS steps are launch-bound, so ``auto`` gives float32 there even on CUDA (bf16 was 1.5x
    slower on an H100); ``bf16`` by name is honoured for first order only."""
    from dfnas.strategies.darts import search_precision

    messages = []
    assert search_precision("auto", "cuda", 1, messages.append) is None
    assert search_precision("bf16", "cpu", 1, messages.append) is torch.bfloat16
    assert search_precision("fp32", "cpu", 1, messages.append) is None and not messages
    assert search_precision("bf16", "cpu", 2, messages.append) is None
    assert messages == ["darts: second-order search runs in float32 (precision bf16 is for first order)"]


def test_a_search_network_in_bf16_agrees_with_float32():
    """Logits within 3% (relative l2) and weight gradients with cosine similarity above 0.99; the
    outputs come back in float32 and the parameters stay float32."""
    torch.manual_seed(0)
    net = SearchNetwork(in_channels=1, resolution=12, num_classes=5, cells=3, channels=8)
    x, y = torch.randn(16, 1, 12, 12), torch.arange(16) % 5

    def run(dtype):
        model = autocast_forward(SearchNetwork(in_channels=1, resolution=12, num_classes=5, cells=3, channels=8),
                                 "cpu", dtype)
        model.load_state_dict(net.state_dict())
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        return logits.detach(), torch.cat([p.grad.flatten() for p in model.weight_parameters()]), model

    ref, ref_grad, _ = run(None)
    low, low_grad, model = run(torch.bfloat16)
    assert low.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())
    assert ((low - ref).norm() / ref.norm()).item() < 0.03
    assert F.cosine_similarity(low_grad, ref_grad, dim=0).item() > 0.99


def test_training_in_bf16_ends_near_float32():
    """Two epochs of the supervised recipe on a learnable toy task: the same seed in bf16 ends within
    0.05 of float32's training loss and 5 points of its training accuracy."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 3
    images = (torch.rand(96, 1, 8, 8, generator=gen) * 80 + labels[:, None, None, None] * 80).to(torch.uint8)

    def train(dtype):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(8 * 36, 3))
        recipe = Recipe(epochs=2, batch_size=16, lr=0.05, crop_padding=0, flip=False)
        return train_classifier(model, TensorImages(images, labels), recipe, "cpu", 0, [0.5], [0.25],
                                log=lambda *_: None, precision=dtype)[-1]

    fp32, bf16 = train(None), train(torch.bfloat16)
    assert fp32["train_top1"] > 0.6  # it learns, so the comparison means something
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], abs=0.05)
    assert bf16["train_top1"] == pytest.approx(fp32["train_top1"], abs=0.05)


def test_channels_last_is_auto_on_cuda_and_trains_like_the_default_format():
    from dfnas.train import uses_channels_last

    assert uses_channels_last("auto", "cuda") and not uses_channels_last("auto", "cpu")
    assert uses_channels_last(True, "cpu") and not uses_channels_last(False, "cuda")
    gen = torch.Generator().manual_seed(1)
    images, labels = (torch.rand(32, 1, 8, 8, generator=gen) * 255).to(torch.uint8), torch.arange(32) % 2

    def train(fmt):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                    torch.nn.Conv2d(4, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 16, 2))
        last = train_classifier(model, TensorImages(images, labels), Recipe(epochs=1, batch_size=8, channels_last=fmt),
                                "cpu", 0, [0.5], [0.25], log=lambda *_: None)[-1]
        return last, model[3].weight

    (nchw, w0), (nhwc, w1) = train(False), train(True)
    assert w1.is_contiguous(memory_format=torch.channels_last) and not w0.is_contiguous(memory_format=torch.channels_last)
    assert nhwc["train_loss"] == pytest.approx(nchw["train_loss"], rel=1e-4)
    torch.testing.assert_close(w1, w0, rtol=1e-4, atol=1e-5)


class Captured(Exception):
    pass


@pytest.mark.parametrize("algorithm, extra, expected", [
    ("darts", {}, torch.bfloat16), ("darts", {"order": 2}, None), ("spos", {}, torch.bfloat16),
    ("proxyless", {}, torch.bfloat16)])
def test_a_search_runs_its_network_in_the_configured_precision(synthetic_set, monkeypatch, tmp_path,
                                                                algorithm, extra, expected):
    """``precision: bf16`` reaches every strategy's network (second-order DARTS excepted: its
    finite differences need float32); the search stops at the capture."""
    from dfnas.config import validate_config
    from dfnas.search_data import SearchData
    from dfnas.strategies import get_strategy

    module = __import__(f"dfnas.strategies.{algorithm}", fromlist=["search"])
    seen = []

    def capture(model, device, dtype):
        seen.append(dtype)
        raise Captured

    monkeypatch.setattr(module, "autocast_forward", capture)
    cfg = validate_config({"device": "cpu", "precision": "bf16", "search": {algorithm: extra}})
    data = SearchData(cfg, "full", 0, *synthetic_set, **get_strategy(algorithm).data_options(cfg["search"][algorithm]))
    with pytest.raises(Captured):
        module.search(cfg, data, 0, tmp_path, "cpu", lambda *_: None)
    assert seen == [expected]


def test_training_in_bf16_runs_the_network_in_bf16():
    seen = []
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 2))
    model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    images, labels = torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.arange(8) % 2
    train_classifier(model, TensorImages(images, labels), Recipe(epochs=1, batch_size=8), "cpu", 0, [0.5], [0.25],
                     log=lambda *_: None, precision=torch.bfloat16)
    assert seen == [torch.bfloat16] and model[0].weight.dtype == torch.float32


def test_the_darts_mixed_op_keeps_channels_last_and_bf16():
    """The stacked mixed op equals the sum of its weighted operations, keeps an NHWC input NHWC, and
    under autocast keeps a bfloat16 state bfloat16 (its float32 weights must not promote the stack)."""
    from dfnas.spaces.darts import PRIMITIVES, MixedOp, Zero

    torch.manual_seed(0)
    op = MixedOp(8, 1).eval()
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    out = op(x, w)
    by_hand = sum(w[k] * o(x) for k, o in enumerate(op.ops) if not isinstance(o, Zero))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, by_hand, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a cell's bf16 state in, bf16 out
        assert op(x.bfloat16(), w).dtype == torch.bfloat16
