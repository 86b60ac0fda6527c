"""Cut a flat network at a named split point into a head (edge) and a tail (cloud)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .architectures import SplitNet
from .zoo import check_split_point


def split_model(model: SplitNet, point: str) -> tuple[nn.Sequential, nn.Sequential]:
    """Return ``(head, tail)`` sharing ``model``'s layers, with ``tail(head(x)) == model(x)``.

    The head runs every layer up to and including ``point``; the tail runs the rest (it is empty,
    i.e. the identity, when ``point`` is the last layer).
    """
    check_split_point(model, point)
    children = list(model.named_children())
    cut = [name for name, _ in children].index(point) + 1
    head = nn.Sequential(OrderedDict(children[:cut]))
    tail = nn.Sequential(OrderedDict(children[cut:]))
    return head, tail
