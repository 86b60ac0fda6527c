"""PNG grids of reconstructions, each beside its original where the original is known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _to_hwc(images) -> np.ndarray:
    try:
        import torch

        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().float().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.clip(np.asarray(images, dtype=np.float32), 0, 1)
    if arr.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {arr.shape}")
    arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] != 3:  # other channel counts: show the mean
        arr = np.repeat(arr.mean(-1, keepdims=True), 3, axis=-1)
    return arr


def grid_image(reconstructions, originals=None, cols: int = 8, min_size: int = 48, gap: int = 2) -> np.ndarray:
    """An RGB uint8 grid: cells of (original | reconstruction), or reconstructions alone.

    ``originals`` may be None (nothing known) or a list/array aligned with the reconstructions in
    which missing entries are None (those cells show the reconstruction beside a grey square).
    Small images are enlarged by an integer factor (nearest neighbour) to at least ``min_size``.
    """
    rec = _to_hwc(reconstructions)
    n, h, w, _ = rec.shape
    if n == 0:
        raise ValueError("no images to draw")
    pairs = originals is not None
    orig = None
    if pairs:
        orig = [None if o is None else _to_hwc(np.asarray(o)[None])[0] for o in originals]
        if len(orig) != n:
            raise ValueError(f"{len(orig)} originals for {n} reconstructions")
    scale = max(1, math.ceil(min_size / max(h, w)))
    h2, w2 = h * scale, w * scale
    cell_w = (2 * w2 + gap) if pairs else w2
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    canvas = np.ones((rows * (h2 + 2 * gap) + gap, cols * (cell_w + 3 * gap) + gap, 3), np.float32)
    up = lambda img: img.repeat(scale, 0).repeat(scale, 1)  # noqa: E731
    for i in range(n):
        r, c = divmod(i, cols)
        y = gap + r * (h2 + 2 * gap)
        x = gap + c * (cell_w + 3 * gap)
        if pairs:
            left = orig[i] if orig[i] is not None else np.full((h, w, 3), 0.5, np.float32)
            canvas[y:y + h2, x:x + w2] = up(left)
            x += w2 + gap
        canvas[y:y + h2, x:x + w2] = up(rec[i])
    return (canvas * 255 + 0.5).astype(np.uint8)


def save_grid(path: str | Path, reconstructions, originals=None, cols: int = 8) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_image(reconstructions, originals, cols)).save(path)
    return path
