"""PNG grids for the experiment pages: originals above their reconstructions, upscaled for reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GAP = 2
BACKGROUND = 255


def _tiles(images) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] (tensor or array) -> (N, H, W, 3) uint8."""
    x = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    x = np.nan_to_num(x.astype(np.float32), nan=0.0).clip(0.0, 1.0)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] != 3:
        x = np.repeat(x.mean(-1, keepdims=True), 3, axis=-1)
    return (x * 255.0 + 0.5).astype(np.uint8)


def grid(rows: list, columns: int = 10, min_tile: int = 56) -> Image.Image:
    """One image of ``rows`` (each an (N, C, H, W) batch, same N): row bands are interleaved per
    block of ``columns`` images, so originals stay directly above their reconstructions."""
    tiles = [_tiles(r) for r in rows]
    n = len(tiles[0])
    if any(len(t) != n for t in tiles):
        raise ValueError("every row of a grid needs the same number of images")
    h, w = tiles[0].shape[1:3]
    scale = max(1, -(-min_tile // max(h, w)))
    th, tw = h * scale, w * scale
    columns = max(1, min(columns, n))
    blocks = -(-n // columns)
    height = blocks * len(tiles) * (th + GAP) + (blocks - 1) * 3 * GAP
    width = columns * (tw + GAP) - GAP
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for b in range(blocks):
        for r, t in enumerate(tiles):
            top = b * (len(tiles) * (th + GAP) + 3 * GAP) + r * (th + GAP)
            for c in range(columns):
                i = b * columns + c
                if i >= n:
                    break
                tile = t[i].repeat(scale, axis=0).repeat(scale, axis=1)
                left = c * (tw + GAP)
                canvas[top:top + th, left:left + tw] = tile
    return Image.fromarray(canvas)


def save_grid(path: Path, rows: list, columns: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    grid(rows, columns).save(tmp, format="PNG", optimize=True)
    tmp.replace(path)
    return path
