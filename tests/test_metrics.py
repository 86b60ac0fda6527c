"""Image metrics: PSNR / SSIM / MSE with data_range 1, per image and summarised."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attacker.metrics import image_metrics


def test_identical_images():
    x = torch.rand(3, 3, 16, 16)
    m = image_metrics(x, x)
    assert m["count"] == 3 and m["mse_mean"] == 0 and m["ssim_mean"] == pytest.approx(1.0)
    assert all(math.isinf(p) for p in m["psnr"])
    assert image_metrics(x, x, psnr_cap=100)["psnr_mean"] == 100


def test_psnr_matches_its_definition_and_lists_are_per_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 28, 28, generator=gen) * 0.8
    y = x + 0.1 * torch.arange(1, 5).view(4, 1, 1, 1) / 4
    m = image_metrics(y, x)
    mse = ((y - x) ** 2).flatten(1).mean(1).double().numpy()
    assert np.allclose(m["psnr"], 10 * np.log10(1 / mse), atol=1e-4)
    assert np.allclose(m["mse"], mse, rtol=1e-5)
    assert m["psnr"][0] > m["psnr"][3]  # larger error, lower PSNR
    assert m["psnr_mean"] == pytest.approx(np.mean(m["psnr"])) and m["psnr_std"] == pytest.approx(np.std(m["psnr"]))


def test_channels_last_numpy_equals_channels_first_torch():
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    a = image_metrics(y, x)
    b = image_metrics(y.permute(0, 2, 3, 1).numpy(), x.permute(0, 2, 3, 1).numpy(), channels_last=True)
    assert a["ssim"] == pytest.approx(b["ssim"]) and a["psnr"] == pytest.approx(b["psnr"])


def test_paper_style_ssim_uses_the_reconstruction_range():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 28, 28, generator=gen)
    washed = 0.45 + 0.1 * x  # low contrast: range 0.1
    m = image_metrics(washed, x)
    assert m["ssim_paper_mean"] != pytest.approx(m["ssim_mean"], abs=1e-3)


@pytest.mark.parametrize("rec, ref, match", [
    (torch.rand(2, 1, 8, 8) * 2, torch.rand(2, 1, 8, 8), "reconstructions"),
    (torch.rand(2, 1, 8, 8), torch.full((2, 1, 8, 8), float("nan")), "originals"),
    (torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8), "shape"),
    (torch.rand(8, 8), torch.rand(8, 8), "batch"),
])
def test_bad_inputs_are_clear_errors(rec, ref, match):
    with pytest.raises(ValueError, match=match):
        image_metrics(rec, ref)
