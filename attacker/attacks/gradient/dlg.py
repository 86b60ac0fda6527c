"""DLG (Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019) and iDLG (Zhao, Mopuri and
Bilen 2020): L-BFGS on the squared Euclidean distance between gradients.

DLG starts from Gaussian noise for the pixels and for the label logits, and minimises

    sum over observed parameters of || grad(x', softmax(y')) - grad(x, y) ||^2

over both with L-BFGS (``lr`` 1, as theirs). iDLG reads the labels off the classifier's gradient
first (:mod:`.labels`) and optimises the pixels alone, which is what makes it converge where DLG's
joint optimisation stalls. The pixels are not boxed (DLG's formulation); they are clamped to
[0, 1] only when returned. ``iterations`` bounds the L-BFGS iterations (and 1.25x as many loss
evaluations in all); the strong-Wolfe line search keeps L-BFGS from the divergence DLG's fixed
steps suffer on ReLU networks, and L-BFGS stops early where it finds no descent direction (on
the ReLU / max-pool ``lenet5`` that is a poor local minimum within a few dozen evaluations; on a
Sigmoid MLP, the exact image). The best iterate seen is kept, so a late blow-up costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import AttackParameterError, check_choice, check_positive_int
from .base import GradientAttack, GradientParams, soft_labels


@dataclass
class DLGParams(GradientParams):
    iterations: int = 300
    lr: float = 1.0
    labels: str = "optimise"
    history: int = 100
    line_search: str = "strong_wolfe"   # or "none" (DLG's fixed steps)

    def validate(self) -> None:
        super().validate()
        check_positive_int("history", self.history)
        check_choice("line_search", self.line_search, ("strong_wolfe", "none"))


@dataclass
class IDLGParams(DLGParams):
    labels: str = "idlg"

    def validate(self) -> None:
        super().validate()
        if self.labels != "idlg":
            raise AttackParameterError(f"labels of iDLG are its own recovery ('idlg'), got {self.labels!r}; "
                                       "gradient/dlg optimises them")


def euclidean_distance(dummy, target) -> torch.Tensor:
    return sum(((g - t) ** 2).sum() for g, t in zip(dummy, target))


class DLGAttack(GradientAttack):
    """DLG: pixels and soft labels by L-BFGS on the Euclidean gradient distance."""

    name = "dlg"
    Params = DLGParams

    def invert(self, target, x, labels, soft, bar):
        p = self.params
        opt = torch.optim.LBFGS([v for v in (x, soft) if v is not None], lr=p.lr, max_iter=p.iterations,
                                history_size=p.history, tolerance_grad=0.0, tolerance_change=0.0,
                                line_search_fn=None if p.line_search == "none" else p.line_search)
        snapshot = lambda: (x.detach().clone(), None if soft is None else soft.detach().clone())  # noqa: E731
        best = dict(zip(("loss", "x", "soft"), (float("inf"), *snapshot())))

        def closure():
            opt.zero_grad()
            loss = euclidean_distance(self.dummy_gradients(x, labels, soft), target)
            loss.backward()
            value = float(loss.detach())
            if value < best["loss"]:  # NaN never compares smaller
                best.update(zip(("loss", "x", "soft"), (value, *snapshot())))
            bar.update(1)
            return loss

        opt.step(closure)
        return best["x"], soft_labels(labels, best["soft"]), best["loss"]


class IDLGAttack(DLGAttack):
    """iDLG: DLG with the labels recovered from the classifier's gradient."""

    name = "idlg"
    Params = IDLGParams
