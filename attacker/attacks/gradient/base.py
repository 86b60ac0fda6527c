"""The gradient family's calling shape: ``reconstruct(gradients) -> images, labels``.

Every gradient-inversion attack optimises a dummy batch until the gradient it produces matches
the observed one; they differ in the distance, the optimiser and the prior. What they share lives
here: checking the update against the observed parameters, the labels (iDLG's recovery from the
classifier's gradient, or optimised jointly as soft labels), random restarts (the one with the
smallest final distance is kept) and the device. ``gradients`` is a mapping parameter name ->
tensor holding exactly the parameters the knowledge observes (an update carrying others is
refused: the attacker of a partial-gradient setting must not be handed more than it sees).
Reconstructions come back as CPU tensors in [0, 1]; labels as int64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from models.env import DEVICES, resolve_device

from ..base import Attack, AttackParameterError, AttackParams, check_choice, check_positive, check_positive_int
from ..inversion.base import placed
from .gradients import loss_gradients
from .knowledge import GradientKnowledge
from .labels import recover_labels

LABEL_MODES = ("auto", "idlg", "optimise")


@dataclass
class GradientParams(AttackParams):
    """Shared by every gradient attack. ``labels``: ``idlg`` (recovered from the classifier's
    gradient), ``optimise`` (soft labels optimised with the pixels, as DLG) or ``auto`` (iDLG where
    the classifier's gradient is observed, else optimised)."""

    iterations: int = 300
    lr: float = 0.1
    labels: str = "auto"
    restarts: int = 1
    seed: int = 0
    device: str | None = None   # "cpu" or "cuda"; None: $SPLITLAB_DEVICE, else the CPU
    progress: bool = False

    def validate(self) -> None:
        check_positive_int("iterations", self.iterations)
        check_positive("lr", self.lr)
        check_choice("labels", self.labels, LABEL_MODES)
        check_positive_int("restarts", self.restarts)
        check_positive_int("seed", self.seed, 0)
        check_choice("device", self.device, (None, *DEVICES))


class GradientAttack(Attack):
    """``Attack(params).fit(GradientKnowledge).reconstruct(gradients) -> (images, labels)``."""

    family = "gradient"
    Params = GradientParams
    Knowledge = GradientKnowledge

    def fit(self, knowledge: GradientKnowledge) -> "GradientAttack":
        super().fit(knowledge)
        self.device = resolve_device(self.params.device, program=f"attacker {self.key()}")
        self.model = placed(knowledge.model, self.device).eval()
        self.fit_seconds = 0.0
        return self

    def reconstruct(self, gradients) -> tuple[torch.Tensor, torch.Tensor]:
        self._require_fit("reconstruct")
        k, p = self.knowledge, self.params
        target = self._checked(gradients)
        started = time.perf_counter()
        labels = self.labels_from(target)
        shape = (k.batch_size, *k.input_shape)
        best = None
        bar = tqdm(total=p.iterations * p.restarts, desc=self.key(), unit="it", disable=not p.progress, leave=False)
        for restart in range(p.restarts):
            gen = torch.Generator().manual_seed(p.seed * 1000 + restart)
            x = torch.randn(shape, generator=gen).to(self.device).requires_grad_(True)
            soft = None if labels is not None else \
                torch.randn(k.batch_size, k.num_classes, generator=gen).to(self.device).requires_grad_(True)
            x, y, loss = self.invert(target, x, labels, soft, bar)
            if best is None or loss < best[2]:
                best = (x, y, loss)
        bar.close()
        x, y, loss = best
        self.last_stats = {"seconds": time.perf_counter() - started, "gradient_distance": float(loss),
                           "labels_from": "idlg" if labels is not None else "optimised"}
        return x.detach().clamp(0, 1).cpu(), y.detach().cpu()

    # --- what each attack provides ------------------------------------------------------------

    def invert(self, target, x, labels, soft, bar):  # pragma: no cover - abstract
        """Optimise the pixels ``x`` (and the soft-label logits ``soft`` when ``labels`` is None),
        leaf tensors drawn from N(0, 1) on the device; return (images, labels, final distance)."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------

    def dummy_gradients(self, x, labels, soft) -> tuple[torch.Tensor, ...]:
        targets = labels if labels is not None else torch.softmax(soft, dim=-1)
        return loss_gradients(self.model, x, targets, self.knowledge.observed, create_graph=True)

    def labels_from(self, target) -> torch.Tensor | None:
        """The labels given to the optimisation, or None when they are optimised with the pixels."""
        k, mode = self.knowledge, self.params.labels
        if mode == "optimise":
            return None
        grads = dict(zip(k.observed, target))
        try:
            return recover_labels(self.model, grads, k.batch_size, k.num_classes).to(self.device)
        except AttackParameterError:
            if mode == "idlg":
                raise
            return None

    def _checked(self, gradients) -> list[torch.Tensor]:
        k = self.knowledge
        if not isinstance(gradients, dict):
            raise AttackParameterError(f"gradients must be a mapping parameter name -> tensor, got "
                                       f"{type(gradients).__name__}")
        missing = [n for n in k.observed if n not in gradients]
        extra = sorted(set(gradients) - set(k.observed))
        if missing or extra:
            raise AttackParameterError(
                "gradients must hold exactly the observed parameters"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; not observed by this attacker: {', '.join(extra)}" if extra else ""))
        params = dict(self.model.named_parameters())
        out = []
        for n in k.observed:
            g = torch.as_tensor(gradients[n], dtype=torch.float32)
            if tuple(g.shape) != tuple(params[n].shape):
                raise AttackParameterError(f"gradient of {n} has shape {tuple(g.shape)}, the parameter "
                                           f"{tuple(params[n].shape)}")
            if not torch.isfinite(g).all():
                raise AttackParameterError(f"gradient of {n} contains NaN or Inf")
            out.append(g.to(self.device))
        return out


def soft_labels(labels, soft) -> torch.Tensor:
    """The labels a run ends with: the given ones, else the optimised soft labels' argmax."""
    return labels if labels is not None else soft.detach().argmax(-1)
