"""An adaptive attacker's knowledge of the deployment's feature defence, and how it applies it.

A defence only counts against an attacker who knows it (issue 16). The deployment record
(``deployment.json``, ``feature_defense``) says which defence the edge runs and with what
parameters (a quantiser's range included); the draws themselves stay on the edge. An *adaptive*
attacker takes that spec into its knowledge (``KnowledgeSource.adaptive``: ``attacker invert
--adaptive``, the lab's ``"adaptive": true``, the defences suite) and each inversion attack uses it
where it learns or optimises:

* white-box: rMLE through the defended head (:func:`models.defences.features.adaptive_head`:
  noise as an expectation over draws, dropout's mask read off the captured zeros, rounding
  straight-through);
* black-box: where its queries return clean features (the model provider's own head), the inverse
  network trains on those features passed through the defence, drawn afresh for every mini-batch
  (queries through the deployed edge carry the defence already: nothing is added);
* query-free: the inversion is the white-box one through the shadow head followed by the defence
  (the shadow head is trained through the tail alone, as the tail was, or with
  ``train_through_defence`` through the defence too: noise and dropout drawn per step, rounding
  straight-through).

A naive attacker has none of it: its knowledge's chain is empty. ``deeper`` is no layer here: it
moved the split point, which the record already names.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from models.defences import features as fdef


def known_chain(record: dict | None, adaptive: bool) -> tuple[fdef.FeatureDefence, ...]:
    """The defences an attacker applies: the record's layers when it is adaptive, else none."""
    if not adaptive:
        return ()
    return tuple(d for d in fdef.record_defences(record) if not isinstance(d, fdef.Deeper))


def defence_layers(chain, channels: int, straight_through: bool = False, layout: str = "nchw") -> nn.Sequential:
    """The chain's layers as deployed (fresh draws per call), named as in a defended head
    (``defence{i}_{type}``), for features with ``channels`` channels laid out as ``layout``;
    ``straight_through``: rounding passes gradients unchanged, so a network in front of it can be
    trained through it."""
    layers = OrderedDict()
    for i, d in enumerate(chain):
        layer = d.module(channels, layout)
        if layer is None:
            continue
        if straight_through and isinstance(layer, fdef.Quantise):
            layer = fdef.StraightThrough(layer)
        layers[f"defence{i}_{d.type}"] = layer
    return nn.Sequential(layers).eval()


def has_layers(chain) -> bool:
    """Whether the chain changes the features (anything but ``deeper``)."""
    return any(not isinstance(d, fdef.Deeper) for d in chain)


def defended(head: nn.Module, chain, split: str | None, channels: int, layout: str = "nchw") -> fdef.DefendedHead:
    """``head`` followed by the chain's layers, as the deployment would run it (for
    :meth:`WhiteBoxKnowledge.from_defended`, which derives the naive and adaptive heads from it)."""
    layers = OrderedDict([("head", head), *defence_layers(chain, channels, layout=layout).named_children()])
    return fdef.DefendedHead(nn.Sequential(layers).eval(), split, tuple(chain), layout)
