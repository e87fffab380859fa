"""Training pieces against hand computations: augmentation, accuracy, the ResNet family."""

import pytest
import torch
from torch import nn

from dfnas.data import TensorImages
from dfnas.models import build_model
from dfnas.imaging import augment_batch
from dfnas.train import Recipe, evaluate


def test_random_crop_is_a_shift_with_zero_fill():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    gen = torch.Generator().manual_seed(0)
    y = augment_batch(x, Recipe(crop_padding=2, flip=False), gen)
    gen = torch.Generator().manual_seed(0)
    top = torch.randint(0, 5, (2,), generator=gen)
    left = torch.randint(0, 5, (2,), generator=gen)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        expected = padded[i, :, top[i] : top[i] + 6, left[i] : left[i] + 6]
        assert torch.equal(y[i], expected)


def test_flip_mirrors_about_half_the_images():
    x = torch.rand(400, 1, 4, 4)
    y = augment_batch(x, Recipe(crop_padding=0, flip=True), torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(2)) for i in range(400)])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(400)])
    assert bool((flipped | kept).all())
    assert 160 < int(flipped.sum()) < 240


def test_cutout_zeroes_a_square_of_the_given_size():
    x = torch.ones(64, 3, 32, 32)
    y = augment_batch(x, Recipe(crop_padding=0, flip=False, cutout=8), torch.Generator().manual_seed(2))
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    assert bool((zeros <= 64).all()) and int(zeros.max()) == 64  # 8 x 8, less where it meets the border
    assert bool((y[:, 0] == y[:, 2]).all())  # the same hole in every channel
    # With the dataset's mean as the fill, the hole is that mean per channel: 0 after normalization.
    mean = [0.49, 0.48, 0.45]
    z = augment_batch(x, Recipe(crop_padding=0, flip=False, cutout=8), torch.Generator().manual_seed(2), fill=mean)
    holes = y == 0
    assert torch.equal(z[~holes], x[~holes])
    for ch in range(3):
        assert torch.equal(z[:, ch][holes[:, ch]], torch.full((int(holes[:, ch].sum()),), mean[ch]))


def test_color_jitter_is_torchvisions_with_the_drawn_factors():
    """Brightness, contrast and saturation of each image, with the factors drawn from the generator
    (uniform in [1 - v, 1 + v]), equal torchvision's adjust_* in that order; no jitter draws nothing
    and changes nothing."""
    import torchvision.transforms.functional as TF

    x = torch.rand(4, 3, 8, 8)
    amounts = (0.4, 0.3, 0.5)
    recipe = Recipe(crop_padding=0, flip=False, color_jitter=amounts)
    y = augment_batch(x, recipe, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    factors = [(1 - v) + torch.rand(4, generator=gen) * 2 * v for v in amounts]
    for i in range(4):
        expected = TF.adjust_brightness(x[i], float(factors[0][i]))
        expected = TF.adjust_contrast(expected, float(factors[1][i]))
        expected = TF.adjust_saturation(expected, float(factors[2][i]))
        torch.testing.assert_close(y[i], expected, atol=1e-6, rtol=0)
    assert not torch.allclose(y, x)
    plain = torch.Generator().manual_seed(4)
    assert torch.equal(augment_batch(x, Recipe(crop_padding=0, flip=False), plain), x)
    assert torch.equal(plain.get_state(), torch.Generator().manual_seed(4).get_state())
    # A one-channel image has no saturation: its own grey.
    g = torch.rand(2, 1, 5, 5)
    only_saturation = augment_batch(g, Recipe(crop_padding=0, flip=False, color_jitter=(0, 0, 0.9)),
                                    torch.Generator().manual_seed(0))
    assert torch.allclose(only_saturation, g)


class Oracle(nn.Module):
    """Predicts class = first pixel * 10 (after undoing the normalization); then 9, then 0, 1, 2, ... ."""

    def forward(self, x):
        k = (x[:, 0, 0, 0] * 0.5 + 0.5) * 10
        logits = -0.01 * torch.arange(10.0).repeat(len(x), 1)
        logits[torch.arange(len(x)), k.round().long().clamp(0, 9)] = 2.0
        logits[:, 9] += 1.0
        return logits


def test_evaluate_top1_top5_by_hand():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    images = torch.zeros(8, 1, 2, 2, dtype=torch.uint8)
    # Pixels chosen so the oracle predicts the label for the first five images, and 8 for the rest.
    for i in range(5):
        images[i, 0, 0, 0] = round(labels[i].item() / 10 * 255)
    images[5:, 0, 0, 0] = round(0.8 * 255)
    result = evaluate(Oracle(), TensorImages(images, labels), "cpu", [0.5], [0.5], batch_size=3)
    assert result["n"] == 8
    assert result["top1"] == pytest.approx(5 / 8)
    # top-5 = {predicted, 9, then classes 0, 1, 2 by index}: images 5, 6, 7 (labels 5-7) miss.
    assert result["top5"] == pytest.approx(5 / 8)


def test_resnet_cifar_parameter_count():
    # ResNet-20 for CIFAR-10 has 0.27M parameters (He et al. 2016, Table 6).
    model = build_model("resnet_cifar", depth=20, width=16, num_classes=10, in_channels=3)
    n = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < n < 0.28e6
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.forward_features(torch.zeros(2, 3, 32, 32)).shape == (2, 64)
