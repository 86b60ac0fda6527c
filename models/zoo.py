"""Build architectures by name and answer questions about their split points.

The zoo is the union of the family modules in ``FAMILIES``: each defines ``BUILDERS`` (name ->
builder taking ``num_classes``, ``input_shape``, ``dropout``) and ``DEFAULT_INPUT_SHAPES``, so a
family of architectures lives in one file of its own and is added here by one line.
"""

from __future__ import annotations

import functools
import importlib

import torch

from .architectures import SplitNet
from .errors import SplitlabError

FAMILIES = ("architectures", "transformers", "morph")  # modules of this package, in listing order


def _merged() -> tuple[dict, dict]:
    builders, shapes = {}, {}
    for family in FAMILIES:
        module = importlib.import_module(f"{__package__}.{family}")
        clash = set(builders) & set(module.BUILDERS)
        if clash:
            raise RuntimeError(f"models.{family} redefines architectures {sorted(clash)}")
        builders.update(module.BUILDERS)
        shapes.update(module.DEFAULT_INPUT_SHAPES)
    return builders, shapes


BUILDERS, DEFAULT_INPUT_SHAPES = _merged()


def architecture_names() -> list[str]:
    return list(BUILDERS)


def build_model(arch: str, num_classes: int = 10, input_shape=None, dropout: float = 0.0,
                dp_compatible: bool = False) -> SplitNet:
    """Build architecture ``arch`` for inputs of ``input_shape`` (C, H, W).

    ``dp_compatible``: the variant DP-SGD can train (BatchNorm replaced by GroupNorm, see
    :func:`models.defences.dp.make_compatible`), as every model trained with DP is stored."""
    if arch not in BUILDERS:
        raise SplitlabError(f"unknown architecture {arch!r}; known: {', '.join(BUILDERS)}")
    if not 0.0 <= dropout < 1.0:
        raise SplitlabError(f"dropout must be in [0, 1), got {dropout}")
    shape = tuple(input_shape or DEFAULT_INPUT_SHAPES[arch])
    if len(shape) != 3 or min(shape) < 1:
        raise SplitlabError(f"input shape must be (C, H, W) with positive sizes, got {shape}")
    try:
        model = BUILDERS[arch](num_classes=num_classes, input_shape=shape, dropout=dropout)
    except RuntimeError as exc:  # e.g. an image too small for the convolutions
        raise SplitlabError(f"{arch} cannot take inputs of shape {shape}: {exc}") from exc
    if dp_compatible:
        from .defences.dp import make_compatible

        model = make_compatible(model)[0]
    return model


def split_points(arch: str) -> list[str]:
    """The named split points of ``arch``, in order from input to output."""
    return build_model(arch).split_points


@functools.lru_cache(maxsize=None)
def feature_layout(arch: str, split: str) -> str:
    """The layout of ``arch``'s features at ``split`` (:meth:`SplitNet.feature_layout`), from the
    public architecture alone: what a deployment record without ``feature_layout`` implies (every
    ``nchw`` record). Cached: it depends on the architecture only, and building one to ask costs
    up to a second (face-mlp's 31 M weights)."""
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        model = build_model(arch)
    check_split_point(model, split, arch)
    return model.feature_layout(split)


def check_split_point(model: SplitNet, point: str, arch: str = "model") -> None:
    if point not in model.split_points:
        raise SplitlabError(
            f"unknown split point {point!r} for {arch}; choose one of: {', '.join(model.split_points)}")


def feature_shapes(model: SplitNet, input_shape) -> dict[str, tuple[int, ...]]:
    """Shape of one example's features (no batch axis) after each split point."""
    shapes = {}
    x = torch.zeros(1, *input_shape)
    model = model.eval()
    with torch.no_grad():
        for name, layer in model.named_children():
            x = layer(x)
            if name in model.split_points:
                shapes[name] = tuple(x.shape[1:])
    return shapes
