"""Inverting Gradients (Geiping, Bauermeister, Dröge and Moeller, NeurIPS 2020).

Geiping et al. replace DLG's Euclidean distance by the cosine distance, which matches the
update's *direction* and so is indifferent to how far training has scaled the gradient's
magnitude, and add a total-variation prior:

    1 - <g', g> / (||g'|| ||g||)  +  tv_weight * TV(x')

with ``cosine="global"`` (their code: inner product and norms over all observed layers at once)
or ``"per-layer"`` (one cosine distance per parameter tensor, summed). The pixels start from
Gaussian noise and take Adam steps on the *signed* gradient (their choice: step sizes that do not
depend on the loss's scale), with the learning rate divided by 10 at 3/8, 5/8 and 7/8 of the run,
and are boxed to the image range [0, 1] after every step. Labels come from iDLG's recovery where
the classifier's gradient is observed (``labels="auto"``), else they are optimised jointly.
The TV prior is the one white-box model inversion uses (:func:`total_variation`), with
``tv_beta=1`` (anisotropic-free L1 form, as theirs) by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import check_choice, check_positive
from ..inversion.whitebox import total_variation
from .base import GradientAttack, GradientParams, soft_labels


@dataclass
class InvertingGradientsParams(GradientParams):
    iterations: int = 1000
    lr: float = 0.1
    tv_weight: float = 1e-2
    tv_beta: float = 1.0
    cosine: str = "global"   # "global" (Geiping et al.'s code) or "per-layer" (summed)

    def validate(self) -> None:
        super().validate()
        check_positive("tv_weight", self.tv_weight, allow_zero=True)
        check_positive("tv_beta", self.tv_beta)
        check_choice("cosine", self.cosine, ("global", "per-layer"))


def cosine_distance(dummy, target, scope: str = "global") -> torch.Tensor:
    if scope == "per-layer":
        return sum(1 - torch.nn.functional.cosine_similarity(g.flatten(), t.flatten(), dim=0, eps=1e-12)
                   for g, t in zip(dummy, target))
    dot = sum((g * t).sum() for g, t in zip(dummy, target))
    norm_g = torch.sqrt(sum(g.pow(2).sum() for g in dummy))
    norm_t = torch.sqrt(sum(t.pow(2).sum() for t in target))
    return 1 - dot / (norm_g * norm_t).clamp_min(1e-12)


class InvertingGradientsAttack(GradientAttack):
    """Cosine distance, TV prior, signed Adam, pixels boxed to [0, 1]."""

    name = "inverting_gradients"
    Params = InvertingGradientsParams

    def invert(self, target, x, labels, soft, bar):
        p = self.params
        opt = torch.optim.Adam([v for v in (x, soft) if v is not None], lr=p.lr)
        milestones = [int(p.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        for _ in range(p.iterations):
            opt.zero_grad()
            distance = cosine_distance(self.dummy_gradients(x, labels, soft), target, p.cosine)
            loss = distance + p.tv_weight * total_variation(x, p.tv_beta).sum() if p.tv_weight else distance
            loss.backward()
            x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            bar.update(1)
        return x.detach(), soft_labels(labels, soft), float(distance.detach())  # the last step's distance
