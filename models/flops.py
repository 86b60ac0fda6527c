"""Count floating-point operations of a head and a tail with torch's FlopCounterMode."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(module: torch.nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs (multiply and add counted separately) of one forward pass on ``inputs``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(inputs)
    return int(counter.get_total_flops())
