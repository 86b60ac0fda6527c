"""Transformer families of the architecture study: a ViT-like and a Swin-like network at CPU scale.

The paper (``../shared/papers/000_11769f52c2347cab.txt``) compares CNNs with transformers of
comparable size (ResNet-50 / Swin-T, ResNet-101 / Swin-S, and a ViT-B cut into stem, attention,
MLP, norm and head for partial gradients). Those are 25-90 M parameters at 224 px; here every
model is sized for CIFAR-10 at 32 x 32 and for training on 1-2 CPU cores:

=============  ===============================================================  ========  ==========
architecture   shape                                                            params    MACs/image
=============  ===============================================================  ========  ==========
vit-mini       patch 4 (64 tokens + class token), dim 64, 6 blocks, 4 heads,    0.31 M    23 M
               MLP ratio 4, final norm, class-token head
swin-mini      patch 2 (16 x 16 tokens), dims 32/64/128, 2 blocks a stage,      0.57 M    21 M
               heads 1/2/4, window 4 (shifted in every second block; the last
               stage is one window), patch merging between stages
resnet10-w16   ResNet-10, width 16 (:mod:`models.architectures`)                0.31 M    16 M
resnet18-w16   ResNet-18, width 16                                              0.70 M    35 M
=============  ===============================================================  ========  ==========

(10 classes; MACs counted by :func:`models.flops.count_flops`, half its FLOPs.) They come in two
pairs of about equal size, as the paper's ResNet-50 / Swin-T (26 / 28 M) and ResNet-101 / Swin-S
(45 / 50 M): vit-mini with resnet10-w16, swin-mini with resnet18-w16; all four within 2.3x of each
other and within 2.2x in compute. A ViT of dim 96 (0.68 M, 48 M MACs) took 1.45x as long per
training step as resnet18-w16 on one thread, which the CPU budget below could not carry. Wider or
deeper variants: :func:`vit` and :func:`swin` take the sizes, :func:`models.architectures.resnet`
the depths and width.

Every model is a flat :class:`~models.architectures.SplitNet`, so a split point is a child's name
and the head is a plain prefix: ``patch_embed`` (the stem, holding the class token and position
embedding so that they travel with the head), then ``block1`` ... ``block6`` (ViT) or ``stage1``,
``stage2``, ``stage3`` (Swin; ``merge1``/``merge2`` between them are not split points, their output
is the next stage's input); ``norm``, ``pool`` and ``head`` follow. Features at a split are token
tensors: ``(65, 64)`` for the ViT, channel-last ``(H, W, C)`` grids for the Swin; each model
declares it (``SplitNet.feature_layout``: ``tokens``, ``nhwc``), the deployment records it, and the
consumers that need the channel axis (the black-box inverse network, the ``nonlinear`` defence) read
it there.

The names follow timm's, which is what the partial-gradient groups of
:mod:`attacker.attacks.gradient.layers` look for: ``patch_embed`` (stem), ``attn`` (attention:
``qkv``, ``proj`` and the Swin's relative position bias table), ``mlp`` (``fc1``, ``fc2``), ``norm``
layers (LayerNorm) and ``head``.

Attention is written out (two ``nn.Linear``, a matrix product and a softmax) rather than
``nn.MultiheadAttention`` or ``scaled_dot_product_attention``: it exports to ONNX as plain
MatMul/Softmax on the TorchScript path the deployments use, it is twice differentiable on every
device (gradient inversion differentiates the gradient), and every ``nn.Linear`` sees batch-first
inputs. The Swin's window attention applies ``qkv`` to the whole ``(B, H, W, C)`` grid *before*
cutting it into windows (a per-token linear map commutes with the shift and the partition, so the
result is Swin's) for that reason: Opacus' per-sample gradients of a Linear need the batch axis
first, which windows of ``B x nW`` would break. DP-SGD then trains both models unchanged (no
BatchNorm; Opacus computes the class token's, position embedding's and bias table's per-sample
gradients with functorch), tested in ``tests/test_transformers.py``.

Training on CIFAR-10 (``python -m models train --arch A --dataset cifar10 --epochs E --batch-size B``:
Adam 1e-3 with cosine decay, no augmentation, the privacy scheme's 6,250 target members of the
25,000-image train split; test accuracy on all 10,000 test images; 1 torch thread, nice 10, on the
shared 2-core machine at load 11-20, which varied between runs: the seconds are rough):

=============  ======  =====  =====  =====  =====  ========
architecture   epochs  batch  steps  train  test   seconds
=============  ======  =====  =====  =====  =====  ========
resnet10-w16   2       128    98     0.505  0.450  85
resnet18-w16   2       128    98     0.507  0.444  168
resnet10-w16   5       128    245    0.733  0.526  219
resnet18-w16   5       128    245    0.815  0.526  351
vit-mini       5       128    245    0.339  0.327  828
swin-mini      5       128    245    0.327  0.314  815
vit-mini       12      64     1176   0.441  0.403  1262
swin-mini      12      64     1176   0.465  0.411  1250
vit-mini       20      64     1960   0.532  0.443  1394
swin-mini      20      64     1960   0.576  0.447  1399
=============  ======  =====  =====  =====  =====  ========

The transformers learn far more slowly per step than the batch-normalised ResNets (after 245 steps
33 % against 53 %) and overfit less (train - test gap 0.01-0.05 against 0.21-0.29 for the
five-epoch ResNets). Comparable accuracy therefore needs a budget per family, not one epoch count:
**ResNets 2 epochs at batch 128 and transformers 20 epochs at batch 64** put all four at 44-45 %
test accuracy with train - test gaps of 0.06 (ResNets) and 0.09-0.13 (transformers); the
transformers then cost about ten times the ResNets' training time. A common level near the
five-epoch ResNets' 53 % needs more than 20 transformer epochs (their test accuracy still rose 4
points from 12 to 20 epochs; not measured further on this CPU).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from .architectures import SplitNet, _fc_block
from .errors import SplitlabError


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           bias: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Scaled dot-product attention over the token axis (-2): ``softmax(bias(q k^T / sqrt(d))) v``."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(k.dim() - 2, k.dim() - 1)
    if bias is not None:
        logits = bias(logits)
    return logits.softmax(-1) @ v


def _split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(..., N, 3C)`` -> q, k, v of shape ``(..., heads, N, C / heads)``. (Axes are counted from
    the front: the ONNX exporter writes a negative axis into a Transpose, which ONNX Runtime refuses.)"""
    n_axis = qkv.dim() - 2
    parts = qkv.reshape(*qkv.shape[:-1], 3, heads, qkv.shape[-1] // (3 * heads))   # (..., N, 3, heads, d)
    return tuple(t.transpose(n_axis, n_axis + 1) for t in parts.unbind(n_axis + 1))


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(..., heads, N, d)`` -> ``(..., N, heads * d)``."""
    h_axis = x.dim() - 3
    x = x.transpose(h_axis, h_axis + 1)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


class Attention(nn.Module):
    """Global multi-head self-attention over tokens ``(B, N, C)`` (the ViT's)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(_merge_heads(attend(*_split_heads(self.qkv(x), self.heads))))


class RelativePositionBias(nn.Module):
    """Swin's learned attention bias by the offset between two tokens of a window (one value per
    offset and head), added to the logits ``(B, nW, heads, N, N)``.

    The offset index (N x N, N = window^2) is rebuilt at each call rather than kept as a buffer:
    Opacus refuses a layer that holds both parameters and buffers, and the table, a parameter of no
    layer type it knows, gets its per-sample gradients from functorch through this forward."""

    def __init__(self, window: int, heads: int):
        super().__init__()
        self.window = window
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.table, std=0.02)

    def index(self, device) -> torch.Tensor:
        w = self.window
        axis = torch.arange(w, device=device)
        coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij")).flatten(1)   # (2, N)
        rel = (coords[:, :, None] - coords[:, None, :]) + (w - 1)                    # (2, N, N) in [0, 2w - 2]
        return rel[0] * (2 * w - 1) + rel[1]

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        n = self.window * self.window
        bias = self.table[self.index(logits.device).reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        return logits + bias                                                         # + (heads, N, N)


class WindowAttention(nn.Module):
    """Swin's attention on a channel-last grid ``(B, H, W, C)``: within ``window`` x ``window``
    windows, with a learned relative position bias, the grid cyclically shifted by ``shift`` first
    (and the pairs of tokens that the shift brought together from opposite edges masked out)."""

    def __init__(self, dim: int, heads: int, resolution: int, window: int, shift: int):
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias = RelativePositionBias(window, heads)
        self.register_buffer("mask", self._shift_mask(resolution) if shift else None, persistent=False)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, nW, window * window, C)``."""
        b, h, w, c = x.shape
        s = self.window
        x = x.reshape(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // s) * (w // s), s * s, c)

    def _grid(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The inverse of :meth:`_windows`."""
        b, _, _, c = x.shape
        s = self.window
        x = x.reshape(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, c)

    def _shift_mask(self, resolution: int) -> torch.Tensor:
        """``(nW, N, N)``: -100 where two tokens of a shifted window came from different regions."""
        region = torch.zeros(1, resolution, resolution, 1)
        cuts = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        for i, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
            region[:, hs, ws, :] = i
        ids = self._windows(region)[0, :, :, 0]                                 # (nW, N)
        return (ids[:, None, :] != ids[:, :, None]).float() * -100.0

    def _bias(self, logits: torch.Tensor) -> torch.Tensor:
        logits = self.relative_position_bias(logits)
        return logits if self.mask is None else logits + self.mask[:, None]     # (nW, 1, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        qkv = self.qkv(x)
        if self.shift:
            qkv = torch.roll(qkv, (-self.shift, -self.shift), (1, 2))
        q, k, v = _split_heads(self._windows(qkv), self.heads)                 # (B, nW, heads, N, d)
        out = self._grid(_merge_heads(attend(q, k, v, self._bias)), h, w)
        if self.shift:
            out = torch.roll(out, (self.shift, self.shift), (1, 2))
        return self.proj(out)


class Mlp(nn.Sequential):
    """The transformer block's feed-forward part: Linear, GELU, Linear."""

    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEmbed(nn.Module):
    """Patchify (a ``patch`` x ``patch`` conv with that stride), prepend the class token, add the
    position embedding: ``(B, C, H, W)`` -> ``(B, 1 + HW / patch^2, dim)``."""

    def __init__(self, channels: int, dim: int, patch: int, tokens: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed


class SwinEmbed(nn.Module):
    """Patchify to a channel-last grid and normalise: ``(B, C, H, W)`` -> ``(B, H/p, W/p, dim)``."""

    def __init__(self, channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin's downsampling: each 2 x 2 group of tokens concatenated (4C), normalised, mapped to 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class Pool(nn.Module):
    """Tokens to one vector per image: the class token (``"cls"``) or the mean of all tokens (``"mean"``)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.kind == "cls" else x.flatten(1, -2).mean(1)


def _init_linear(model: nn.Module) -> nn.Module:
    """ViT/Swin initialisation (timm's): truncated normal (std 0.02) weights and zero biases for
    every Linear."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _finish(layers: "OrderedDict[str, nn.Module]", dim: int, pool: str, num_classes: int, dropout: float,
            points: list[str], layout: str) -> SplitNet:
    """The norm, pool and head after ``layers``; the features at every split point are in ``layout``."""
    layers["norm"] = nn.LayerNorm(dim)
    layers["pool"] = Pool(pool)
    _fc_block(layers, "head", dim, num_classes, dropout)
    return _init_linear(SplitNet(layers, points, {p: layout for p in points}))


def _patch_side(input_shape, patch: int, arch: str) -> int:
    c, h, w = input_shape
    if h != w or h % patch:
        raise SplitlabError(f"{arch} needs square images whose side is a multiple of the patch size {patch}, "
                            f"got {h} x {w}")
    return h // patch


def vit(num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0, dim: int = 64, depth: int = 6,
        heads: int = 4, patch: int = 4, mlp_ratio: float = 4.0) -> SplitNet:
    """A ViT: patch embedding with class token and position embedding, ``depth`` pre-norm blocks of
    global attention, final norm, the class token's head. Split at ``patch_embed`` and every block."""
    side = _patch_side(input_shape, patch, "vit")
    layers: OrderedDict[str, nn.Module] = OrderedDict(patch_embed=ViTEmbed(input_shape[0], dim, patch, side * side))
    for i in range(1, depth + 1):
        layers[f"block{i}"] = Block(dim, Attention(dim, heads), mlp_ratio)
    return _finish(layers, dim, "cls", num_classes, dropout, list(layers), "tokens")


def swin(num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0, dim: int = 32,
         depths: tuple[int, ...] = (2, 2, 2), heads: tuple[int, ...] = (1, 2, 4), patch: int = 2, window: int = 4,
         mlp_ratio: float = 4.0) -> SplitNet:
    """A Swin transformer: patch embedding, stages of window-attention blocks (the window shifted by
    half its size in every second block), patch merging between stages (half the resolution, twice
    the channels), final norm, mean-pooled head. Split at ``patch_embed`` and every stage."""
    side = _patch_side(input_shape, patch, "swin")
    layers: OrderedDict[str, nn.Module] = OrderedDict(patch_embed=SwinEmbed(input_shape[0], dim, patch))
    points = ["patch_embed"]
    for i, (depth, h) in enumerate(zip(depths, heads), start=1):
        if i > 1:
            layers[f"merge{i - 1}"] = PatchMerging(dim)
            dim, side = 2 * dim, side // 2
        win = min(window, side)  # a stage no larger than a window is one window, never shifted
        if side % win or (i < len(depths) and side % 2):
            raise SplitlabError(f"swin: stage {i}'s {side} x {side} tokens do not divide into {win} x {win} "
                                "windows and 2 x 2 merges; use an image side of patch x window x 2^(stages - 1)")
        layers[f"stage{i}"] = nn.Sequential(*(
            Block(dim, WindowAttention(dim, h, side, win, win // 2 if j % 2 and win < side else 0), mlp_ratio)
            for j in range(depth)))
        points.append(f"stage{i}")
    return _finish(layers, dim, "mean", num_classes, dropout, points, "nhwc")


def vit_mini(num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0) -> SplitNet:
    """The study's ViT at CPU scale (see the module docstring)."""
    return vit(num_classes, input_shape, dropout)


def swin_mini(num_classes: int = 10, input_shape=(3, 32, 32), dropout: float = 0.0) -> SplitNet:
    """The study's Swin at CPU scale (see the module docstring)."""
    return swin(num_classes, input_shape, dropout)


BUILDERS: dict[str, Callable[..., SplitNet]] = {
    "vit-mini": vit_mini,
    "swin-mini": swin_mini,
}

DEFAULT_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "vit-mini": (3, 32, 32),
    "swin-mini": (3, 32, 32),
}
