"""Validated features as they arrived: a zero-copy view of the request bytes in the wire dtype."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protos import wire


@dataclass
class Features:
    """Validated features in their wire representation (a zero-copy view of the request bytes).

    Tail runners convert them to float32 themselves (ONNX Runtime does it inside the graph).
    """

    raw: np.ndarray   # (batch, *feature shape); float32, float16, uint16 (bfloat16 bits), int8, uint8
    code: int         # the wire dtype (``Tensor.DType``)
    scale: float = 0.0  # int8 only

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def merge_key(self) -> tuple:
        """Requests with equal keys can be concatenated into one batch."""
        return (self.code, self.scale)

    def float32(self) -> np.ndarray:
        return wire.to_float32(self.raw, self.code, self.scale)

    @staticmethod
    def concat(parts: list["Features"]) -> "Features":
        if len(parts) == 1:
            return parts[0]
        return Features(np.concatenate([p.raw for p in parts]), parts[0].code, parts[0].scale)
