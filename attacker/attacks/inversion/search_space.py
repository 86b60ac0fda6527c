"""Where the black-box classifier inversion searches: a low-dimensional code ``z`` and its image.

A gradient-free (NES) estimate needs far fewer queries per step in few dimensions than in the
10,304 pixels of a 112x92 face, and a face's identity lives in few directions. Two spaces:

* :class:`PixelGrid` (``basis="grid"``): a grid ``downsample`` times coarser than the image,
  bilinearly upsampled; needs no data. ``z`` is in pixel units (start: the constant ``start``).
* :class:`FaceBasis` (``basis="faces"``): the mean and the first ``components`` principal
  components (eigenfaces) of the attacker's auxiliary face images; ``z`` is in units of each
  component's standard deviation, so one exploration scale fits every direction, and the search
  starts at the auxiliary mean face (z = 0). When the auxiliary images are labelled with the
  target's classes, the basis for class c is built *without* the images of class c: the attacker
  never holds a photo of the person it reconstructs, so whatever of that person the result shows
  came from the model's answers. A person with no auxiliary images of their own uses all of them.

Measured on face-mlp / AT&T (all 40 people, ``benchmarks/results/face_inversion``): see that report.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..base import AttackParameterError


class PixelGrid:
    def __init__(self, input_shape, count: int, downsample: int, start: float):
        self.shape = tuple(input_shape)
        c, h, w = self.shape
        self.grid = (c, max(1, h // downsample), max(1, w // downsample))
        self.count, self.value = count, start

    def start(self) -> torch.Tensor:
        return torch.full((self.count, *self.grid), self.value)

    def image(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z, size=self.shape[1:], mode="bilinear", align_corners=False).clamp(0, 1)


class FaceBasis:
    def __init__(self, input_shape, classes: torch.Tensor, aux_images, aux_labels, components: int):
        if aux_images is None:
            raise AttackParameterError("basis='faces' needs the attacker's auxiliary face images (aux_images)")
        self.shape = tuple(input_shape)
        x = torch.as_tensor(np.asarray(aux_images), dtype=torch.float32)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            raise AttackParameterError(f"aux_images must be (N, {', '.join(map(str, self.shape))}), "
                                       f"got {tuple(x.shape)}")
        x = x.flatten(1)
        labels = None if aux_labels is None else torch.as_tensor(np.asarray(aux_labels)).long().reshape(-1)
        if labels is not None and len(labels) != len(x):
            raise AttackParameterError(f"aux_labels must have one label per aux image ({len(x)}), got {len(labels)}")
        bases = {}
        for c in classes.unique().tolist():
            keep = x if labels is None or bool((labels == c).all()) else x[labels != c]
            if len(keep) <= components:
                raise AttackParameterError(f"components ({components}) must be fewer than the auxiliary images used "
                                           f"for a class ({len(keep)})")
            mean = keep.mean(0)
            _, sv, vt = torch.linalg.svd(keep - mean, full_matrices=False)
            scale = sv[:components] / (len(keep) - 1) ** 0.5
            bases[c] = (mean, vt[:components] * scale[:, None])
        self.mean = torch.stack([bases[c][0] for c in classes.tolist()])        # (n, D)
        self.directions = torch.stack([bases[c][1] for c in classes.tolist()])  # (n, k, D)
        self.components = components

    def start(self) -> torch.Tensor:
        return torch.zeros(len(self.mean), self.components)

    def image(self, z: torch.Tensor) -> torch.Tensor:
        """Images of codes (n * r, k): r codes per class, class by class (the NES samples)."""
        n = len(self.mean)
        flat = torch.bmm(z.reshape(n, -1, self.components), self.directions) + self.mean[:, None]
        return flat.reshape(-1, *self.shape).clamp(0, 1)


def search_space(params, knowledge, classes: torch.Tensor):
    """The space ``params.basis`` names, for ``classes`` in ``knowledge``'s input shape."""
    if params.basis == "faces":
        return FaceBasis(knowledge.input_shape, classes, knowledge.aux_images, knowledge.aux_labels,
                         params.components)
    return PixelGrid(knowledge.input_shape, len(classes), params.downsample, params.start)
