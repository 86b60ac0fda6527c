"""Image reconstruction metrics: PSNR, SSIM and MSE with scikit-image, on images in [0, 1].

``image_metrics(reconstructions, originals)`` takes two batches (N, C, H, W) (torch or numpy, or
channels-last (N, H, W, C) numpy with ``channels_last=True``) and returns a flat dict::

    {"count", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "ssim_paper_mean", "ssim_paper_std",
     "mse_mean", "mse_std", "psnr": [...], "ssim": [...], "ssim_paper": [...], "mse": [...]}

PSNR and SSIM use ``data_range=1`` (the images' fixed range). He et al.'s code passed the
reconstruction's own range (``max - min`` of the reconstructed image) as SSIM's data range, so
their SSIM depends on the reconstruction itself: a washed-out, low-contrast reconstruction gets a
small range, which shrinks SSIM's stabilising constants and changes its score. A fixed range of 1
is what our images span, so our SSIM is comparable across attacks but not exactly with the
paper's column; ``ssim_paper`` is also returned, computed their way, for the side-by-side tables.
SSIM is computed per channel (``channel_axis``) for colour images with scikit-image's default 7x7 uniform window. PSNR of an
exact reconstruction is ``inf`` (float32 round-off gives 130-160 dB); the summaries keep it unless
``psnr_cap`` is given. Every table and printout of this project caps it at ``PSNR_CAP`` (100 dB).
LPIPS is not computed (it needs pretrained network weights that this testbed does not ship).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

PSNR_CAP = 100.0  # dB: anything above is an exact reconstruction up to float round-off


def _channels_last(images, channels_last: bool) -> np.ndarray:
    try:
        import torch

        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().float().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 3:  # (N, H, W): grey images
        arr = arr[..., None] if channels_last else arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"images must be a batch (N, C, H, W), got shape {arr.shape}")
    return arr if channels_last else arr.transpose(0, 2, 3, 1)


def image_metrics(reconstructions, originals, channels_last: bool = False, psnr_cap: float | None = None) -> dict:
    """Per-image and summary PSNR / SSIM / MSE of ``reconstructions`` against ``originals``."""
    rec, ref = _channels_last(reconstructions, channels_last), _channels_last(originals, channels_last)
    if rec.shape != ref.shape:
        raise ValueError(f"reconstructions {rec.shape} and originals {ref.shape} differ in shape")
    if len(rec) == 0:
        raise ValueError("no images to compare")
    for name, arr in (("reconstructions", rec), ("originals", ref)):
        if not np.isfinite(arr).all() or arr.min() < -1e-6 or arr.max() > 1 + 1e-6:
            raise ValueError(f"{name} must be finite images in [0, 1] (got {arr.min():.3g}..{arr.max():.3g})")
    rec, ref = np.clip(rec, 0, 1), np.clip(ref, 0, 1)
    psnr, ssim, ssim_paper, mse = [], [], [], []
    colour = rec.shape[-1] > 1
    for r, o in zip(rec, ref):
        err = mean_squared_error(o, r)
        mse.append(float(err))
        value = float("inf") if err == 0 else float(peak_signal_noise_ratio(o, r, data_range=1.0))
        psnr.append(min(value, psnr_cap) if psnr_cap is not None else value)
        kwargs = {"channel_axis": -1} if colour else {}
        a, b = (o, r) if colour else (o[..., 0], r[..., 0])
        ssim.append(float(structural_similarity(a, b, data_range=1.0, **kwargs)))
        ssim_paper.append(float(structural_similarity(a, b, data_range=max(float(r.max() - r.min()), 1e-6), **kwargs)))
    out: dict = {"count": len(rec)}
    for name, values in (("psnr", psnr), ("ssim", ssim), ("ssim_paper", ssim_paper), ("mse", mse)):
        arr = np.asarray(values)
        with np.errstate(invalid="ignore"):  # inf - inf when several reconstructions are exact
            out[f"{name}_mean"] = float(arr.mean())
            out[f"{name}_std"] = float(arr.std()) if np.isfinite(arr).all() else float("nan")
    out.update(psnr=psnr, ssim=ssim, ssim_paper=ssim_paper, mse=mse)
    return out
