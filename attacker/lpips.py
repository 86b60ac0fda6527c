"""LPIPS (Zhang et al. 2018, AlexNet variant) from weight files the user supplies.

LPIPS is a learned metric: ImageNet-pretrained AlexNet features, unit-normalised per channel,
squared differences weighted by linear layers fitted to human judgements. Neither set of weights
ships with the testbed, and this machine cannot download them, so the metric is computed only
from files given by path, and reported as "not computed" otherwise (never a placeholder number):

* ``weights``: the linear layers, the ``lpips`` package's ``weights/v0.1/alex.pth`` (keys
  ``lin0.model.1.weight`` ... ``lin4.model.1.weight``);
* ``backbone``: torchvision's AlexNet ImageNet state dict (``alexnet-owt-7be5be79.pth``); default:
  where torchvision caches it (``$TORCH_HOME/hub/checkpoints``).

The network is the ``lpips`` package's: inputs scaled to [-1, 1] and shifted/scaled by its
constants, ReLU outputs of AlexNet's five conv layers, spatial mean of each weighted difference,
summed. Grey images are repeated to three channels; images smaller than 32 pixels are upsampled
(bilinear) to 32, the smallest size AlexNet's pooling takes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import SplitlabError

BACKBONE_FILE = "alexnet-owt-7be5be79.pth"
RELU_INDICES = (1, 4, 7, 9, 11)      # AlexNet.features' ReLUs after conv1..conv5
CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def default_backbone() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILE


def _load(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SplitlabError(f"LPIPS {what} not found at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class LPIPS(nn.Module):
    """``LPIPS(weights, backbone=None)(a, b) -> (N,)`` distances for images (N, C, H, W) in [0, 1]."""

    def __init__(self, weights, backbone=None):
        super().__init__()
        from torchvision.models import alexnet

        features = alexnet(weights=None).features[:RELU_INDICES[-1] + 1]
        state = _load(Path(backbone) if backbone else default_backbone(), "backbone (AlexNet ImageNet weights)")
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        features.load_state_dict(state, strict=True)
        self.features = features.eval()
        lin = _load(Path(weights), "linear-layer weights")
        self.lins = nn.ModuleList()
        for i, c in enumerate(CHANNELS):
            key = next((k for k in lin if k.startswith(f"lin{i}.") and k.endswith("weight")), None)
            if key is None or tuple(lin[key].shape) != (1, c, 1, 1):
                raise SplitlabError(f"{weights}: no lin{i} weight of shape (1, {c}, 1, 1) (is it LPIPS's alex.pth?)")
            conv = nn.Conv2d(c, 1, 1, bias=False)
            conv.weight.data.copy_(lin[key])
            self.lins.append(conv)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if min(x.shape[-2:]) < 32:
            x = F.interpolate(x, size=(max(32, x.shape[-2]), max(32, x.shape[-1])), mode="bilinear",
                              align_corners=False)
        x = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in RELU_INDICES:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        device = self.shift.device
        fa, fb = self._activations(a.float().to(device)), self._activations(b.float().to(device))
        return sum(lin((x - y).pow(2)).mean((1, 2, 3)) for lin, x, y in zip(self.lins, fa, fb)).cpu()
