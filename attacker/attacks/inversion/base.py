"""The inversion family's calling shape: ``reconstruct(features) -> images``, and where it runs.

Inversion attacks (He et al. 2019; later classifier inversion) see the features an edge sent and
return the private inputs they came from: (N, *feature_shape) -> (N, C, H, W) in [0, 1]. What
configures and feeds an attack is family-agnostic (:mod:`attacker.attacks.base`).

The device (``cpu`` / ``cuda``) is a parameter of the attack (:class:`InversionParams`), not part of
its knowledge: it is how the attacker computes, not what the threat model lets it know. Left
``None`` it is ``$SPLITLAB_DEVICE``, else the CPU; CUDA asked for where torch has none falls back to
the CPU with a message (``models.env.resolve_device``), so a run configured for a GPU box still
completes here. The modules an attack works through (the head, the tail, an ONNX-converted head:
``onnx2torch`` modules move like any other) are *copied* onto the device (:func:`placed`): a
knowledge object's modules may share their weights with the caller's model (the suites split the
target in hand), which moving them in place would leave half on the GPU. Inputs and outputs stay
CPU tensors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from models.env import DEVICES, resolve_device

from ..base import Attack, AttackParams, check_choice


@dataclass
class InversionParams(AttackParams):
    """What every inversion attack's parameters share: where it computes."""

    device: str | None = None   # "cpu" or "cuda"; None: $SPLITLAB_DEVICE, else the CPU

    def validate(self) -> None:
        check_choice("device", self.device, (None, *DEVICES))


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (the CPU for a module with neither)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def placed(module: nn.Module, device: str) -> nn.Module:
    """``module`` itself when it is on ``device`` already, else a copy of it moved there."""
    if module_device(module).type == torch.device(device).type:
        return module
    return copy.deepcopy(module).to(device)


class InversionAttack(Attack):
    """``Attack(params).fit(knowledge).reconstruct(features)``; ``fit`` settles ``self.device``."""

    family = "inversion"
    device: str = "cpu"

    def fit(self, knowledge) -> "InversionAttack":
        super().fit(knowledge)
        self.device = resolve_device(self.params.device, program=f"attacker {self.key()}")
        return self

    def reconstruct(self, features) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
