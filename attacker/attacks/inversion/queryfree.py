"""Query-free model inversion: a shadow head trained through the frozen tail (He et al. 2019, Alg. 3).

The cloud knows the tail f2 and has labelled auxiliary data, but cannot query the edge. It trains a
shadow head g so that f2(g(x)) classifies the auxiliary data (cross-entropy, f2 frozen; the
testbed's one training loop, :func:`models.fit.fit`), then runs the white-box rMLE attack
(:mod:`.whitebox`) with g in place of the unknown head, on the attack's ``device`` (both stages).

Shadow structures (:func:`shadow_head`):

* ``same`` - the target's head architecture (from the deployment record), freshly initialised
  with the attack's own ``seed`` (not the target's training seed); for a target trained with
  DP-SGD (``dp_compatible`` in the record) its DP variant, GroupNorm where the zoo has BatchNorm,
  as the target's head is built;
* ``different`` - He et al.'s Table 5 structures, and one of ours for ReLU32:

| target | split | target head | different shadow |
|---|---|---|---|
| lenet5 | conv1 | one 5x5 conv (8) | two 3x3 convs (8, 8) |
| lenet5 | relu2 | two 5x5 convs | four 3x3 convs (8, 8, pool, 16, 16) + ReLU |
| he-cifar-cnn | conv11 | one 3x3 conv (64) | 3x3 conv (16) + 3x3 conv (64) |
| he-cifar-cnn | relu22 | 3x3 convs 64, 64, pool, 128, 128 | 5x5 conv (64), pool, 5x5 conv (128) + ReLU |
| he-cifar-cnn | relu32 | 3x3 convs 64, 64, pool, 128, 128, pool, 128, 128 | (ours) 5x5 convs 64, pool, 128, pool, 128 + ReLU |

The inversion uses :data:`QUERYFREE_DEFAULTS` where ``whitebox`` leaves a parameter ``None``.

Shadows of a ``relu`` split end in ReLU (the tail expects non-negative features); those of a
``conv`` split do not. A ``different`` shadow exists only for these split points.

Against a feature defence (issue 16). The deployment adds its defence after the head, and the tail
was trained on clean features (a deploy-time defence does not retrain it). A *naive* attacker (no
defence in its knowledge) trains g through the tail and inverts the defended features it captured
as if they were clean. An *adaptive* one (the knowledge's ``defences``, from ``deployment.json``:
:mod:`.known_defence`) inverts through g followed by the defence, with the white-box attack's
adaptive machinery (:meth:`WhiteBoxKnowledge.from_defended`: an expectation over noise draws,
dropout's mask read off the captured zeros, rounding straight-through). Its shadow head is trained
through the tail alone by default, as the tail was: g then approximates the clean head, which is
what the defence is applied to. ``train_through_defence=True`` trains it through the defence as
well, tail(D(g(x))) with D as deployed (noise and dropout masks drawn afresh each step, so the loss
is an expectation over them; rounding straight-through) - what an attacker would do against a tail
retrained on defended features. Measured on lenet5 / MNIST at conv1 against ``dropout:p=0.5``
(3 epochs on 6000 training images, 200 iterations, the same ten test images): through the defence
the shadow head inverts even clean features worse (15.2 against 16.2 dB) and the adaptive attack
gets 11.7 dB; trained through the tail alone and inverted through the defence, 13.4 dB (naive:
12.9). ``whitebox.adaptive`` is not a setting here: the knowledge decides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from models.architectures import feature_channels
from models.fit import fit as train_network

from ..base import AttackParameterError, as_float_tensor, check_choice, check_positive, check_positive_int
from .base import InversionAttack, InversionParams, placed
from .knowledge import QueryFreeKnowledge, WhiteBoxKnowledge, probe_feature_shape
from .known_defence import defence_layers, defended
from .whitebox import WhiteBoxAttack, WhiteBoxParams


def _seq(*layers) -> nn.Sequential:
    return nn.Sequential(*layers)


DIFFERENT_SHADOWS: dict[tuple[str, str], Callable[[int], nn.Module]] = {
    ("lenet5", "conv1"): lambda c: _seq(nn.Conv2d(c, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)),
    ("lenet5", "relu2"): lambda c: _seq(
        nn.Conv2d(c, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU()),
    ("he-cifar-cnn", "conv11"): lambda c: _seq(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(),
                                               nn.Conv2d(16, 64, 3, padding=1)),
    ("he-cifar-cnn", "relu22"): lambda c: _seq(
        nn.Conv2d(c, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 128, 5, padding=2), nn.ReLU()),
    ("he-cifar-cnn", "relu32"): lambda c: _seq(
        nn.Conv2d(c, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 128, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(128, 128, 5, padding=2), nn.ReLU()),
}


def shadow_head(arch: str | None, split: str | None, structure: str, input_shape, num_classes: int | None,
                seed: int = 0, dp_compatible: bool = False) -> nn.Module:
    """A freshly initialised shadow head of the given ``structure`` ('same' or 'different');
    ``dp_compatible``: the 'same' head as a DP-SGD-trained target's (GroupNorm for BatchNorm)."""
    torch.manual_seed(seed)
    if structure == "same":
        if not arch or not split:
            raise AttackParameterError("shadow='same' needs the deployment's arch and split in the knowledge")
        from models.split import split_model
        from models.zoo import build_model

        model = build_model(arch, num_classes or 10, tuple(input_shape), dp_compatible=dp_compatible)
        return split_model(model, split)[0]
    builder = DIFFERENT_SHADOWS.get((arch or "", split or ""))
    if builder is None:
        known = ", ".join(f"{a} {s}" for a, s in DIFFERENT_SHADOWS)
        raise AttackParameterError(f"no 'different' shadow structure for {arch} {split}; defined for: {known}")
    return builder(input_shape[0])


# The shadow head only approximates the real one, so exact feature matching is neither possible
# nor useful: fewer iterations and a stronger smoothness prior than white-box (measured on MNIST:
# relu2 14.5 dB with tv 0.5 against 11.8 dB without). Used where ``whitebox`` leaves them None.
QUERYFREE_DEFAULTS = {"shallow": {"iterations": 1000, "tv_weight": 0.0}, "deep": {"iterations": 1000, "tv_weight": 0.5}}
_SHALLOW_SPLITS = {"conv1", "relu1", "conv11", "relu11"}


def queryfree_whitebox(params: WhiteBoxParams, split: str | None) -> WhiteBoxParams:
    """``params`` with query-free defaults filled in, then the split point's white-box defaults."""
    defaults = QUERYFREE_DEFAULTS["shallow" if split in _SHALLOW_SPLITS else "deep"]
    filled = params.replace(**{k: v for k, v in defaults.items() if getattr(params, k) is None})
    return filled.resolved(split)


@dataclass
class QueryFreeParams(InversionParams):
    shadow: str = "same"            # "same" or "different" structure (see module docstring)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 1234
    progress: bool = True
    whitebox: WhiteBoxParams | dict = field(default_factory=WhiteBoxParams)
    train_through_defence: bool = False  # adaptive: train the shadow head through the known defence too

    def __post_init__(self) -> None:
        if isinstance(self.whitebox, dict):
            self.whitebox = WhiteBoxParams.from_dict(self.whitebox)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        check_choice("shadow", self.shadow, ("same", "different"))
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_positive_int("seed", self.seed, minimum=0)
        if not isinstance(self.train_through_defence, bool):
            raise AttackParameterError(f"train_through_defence must be true or false, got {self.train_through_defence!r}")
        if not isinstance(self.whitebox, WhiteBoxParams):
            raise AttackParameterError(f"whitebox must be WhiteBoxParams or a dict, got {type(self.whitebox).__name__}")
        self.whitebox.validate()
        if self.whitebox.adaptive:
            raise AttackParameterError("whitebox.adaptive: the query-free attack is adaptive when its knowledge holds "
                                       "the deployment's defence (attacker invert --adaptive; the lab's "
                                       "\"adaptive\": true)")
        if self.whitebox.device is not None:
            raise AttackParameterError(f"whitebox.device ({self.whitebox.device!r}): the inversion runs where the shadow "
                                       "head is; set the query-free attack's own device instead")


class QueryFreeAttack(InversionAttack):
    """Train a shadow head through the frozen tail, then invert with it (white-box rMLE)."""

    name = "queryfree"
    Params = QueryFreeParams
    Knowledge = QueryFreeKnowledge

    def fit(self, knowledge: QueryFreeKnowledge) -> "QueryFreeAttack":
        super().fit(knowledge)
        p = self.params
        started = time.perf_counter()
        shadow = shadow_head(knowledge.arch, knowledge.split, p.shadow, knowledge.input_shape,
                             knowledge.num_classes, p.seed, knowledge.dp_compatible)
        got = probe_feature_shape(shadow, knowledge.input_shape)
        if got != tuple(knowledge.feature_shape):
            raise AttackParameterError(f"the {p.shadow} shadow head outputs {got}, the tail takes {knowledge.feature_shape}")
        x, y = knowledge.aux_images, knowledge.aux_labels
        tail = placed(knowledge.tail, self.device)
        layout = knowledge.feature_layout
        channels = feature_channels(knowledge.feature_shape, layout)
        # adaptive and trained through the defence: as deployed (fresh draws per step, rounding straight-through)
        trained_through = knowledge.defences if p.train_through_defence else ()
        defence = defence_layers(trained_through, channels, straight_through=True, layout=layout).to(self.device)

        def through_tail(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(tail(defence(features)), labels)

        train_network(shadow, x, y, loss=through_tail, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=p.seed,
                      device=self.device, progress=p.progress, desc=f"queryfree shadow ({p.shadow})", leave=False)
        for q in shadow.parameters():
            q.requires_grad_(False)
        with torch.no_grad():
            correct = sum(int((tail(defence(shadow(x[i:i + 512].to(self.device)))).argmax(1).cpu()
                               == y[i:i + 512]).sum()) for i in range(0, len(x), 512))
        self.shadow = shadow
        self.shadow_accuracy = correct / len(x)
        self.resolved = queryfree_whitebox(p.whitebox, knowledge.split)
        if not p.progress:  # no progress bars means none for the inversion stage either
            self.resolved = self.resolved.replace(progress=False)
        # the inversion: white-box rMLE through the shadow head (and the known defence, adaptively)
        head = defended(shadow.cpu(), knowledge.defences, knowledge.split, channels, layout)
        self.inverter = WhiteBoxAttack(self.resolved.replace(device=self.device, adaptive=bool(knowledge.defences)))
        self.inverter.fit(WhiteBoxKnowledge.from_defended(head, knowledge.input_shape, "the shadow head"))
        self.fit_seconds = time.perf_counter() - started
        return self

    def fit_stats(self) -> dict:
        self._require_fit("fit_stats")
        return {"shadow_accuracy": self.shadow_accuracy, "aux_count": len(self.knowledge.aux_images)}

    def reconstruct(self, features) -> torch.Tensor:
        self._require_fit("reconstruct")
        k = self.knowledge
        target = as_float_tensor("features", features, tuple(k.feature_shape))
        images = self.inverter.reconstruct(target)
        self.last_stats = self.inverter.last_stats
        return images
