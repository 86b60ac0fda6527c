"""Classifier model inversion (Fredrikson, Jha and Ristenpart, CCS 2015, MI-FACE): reconstruct
what a face recogniser has learnt of a person from the person's class alone.

``reconstruct(classes) -> images``: for each class c, gradient descent on the input image x of the
cost c(x) (``loss="cross-entropy"``: -log p_c(x), the course project's choice; ``"probability"``:
1 - p_c(x), the paper's), from a constant image (``start``, the paper's 0), pixels projected onto
[0, 1] after each step, by ``step`` times the gradient. The step is 100, not the course project's
0.1: on this testbed's [0, 1] pixels the cross-entropy's gradient is about 1e-3 per pixel, so 0.1
left the image near black after 100 steps (identified by SSIM 15% of the time, an independent
recogniser at chance), 100 gives recognisable faces (``benchmarks/results/face_inversion``). Like the paper, it stops an image when its cost has not improved for
``patience`` steps or falls below ``target_cost``, and returns the best image it saw. Then the
paper's post-processing, as options: total-variation denoising (``denoise``, scikit-image's
Chambolle weight; 0 = off) and an unsharp mask (``sharpen``, its amount; 0 = off).

The gradient comes from the knowledge (:mod:`.classifier_knowledge`):

* **white-box** (the whole classifier; in a split deployment the captured head joined to the tail):
  the exact gradient;
* **black-box** (the API's probabilities only): a gradient-free estimate, NES (Wierstra et al.;
  Ilyas et al. 2018) with ``samples`` antithetic pairs of Gaussian directions per step, each
  sample's cost replaced by its rank (utilities from +0.5 for the best to -0.5 for the worst: the
  step no longer depends on the cost's scale, which falls by orders of magnitude during a search),
  the cost being -log p_c (``cross-entropy``), and a step of ``step`` times the estimate divided by
  its root mean square. ``max_queries`` bounds the queries per class (each step costs 2 * samples +
  1: the current image is scored to keep the best). The search runs in a low-dimensional space
  (``basis``, :mod:`.search_space`): a coarse pixel grid (``grid``), or the eigenfaces of the
  attacker's auxiliary faces (``faces``) without the attacked person's own photos. Measured on
  face-mlp / AT&T, 40 people, 3 seeds (``benchmarks/results/face_inversion``): the pixel grid at
  1/8 (154 dimensions) stays near chance for an independent recogniser with 1,050 queries a person
  (top-1 0.058), 40 eigenfaces reach top-1 0.75 with 220 queries and 0.79 with 1,050 (white-box:
  0.70); the earlier unranked pixel-grid search was at chance (0.025) with 1,050.
* **query-free** (the tail and labelled auxiliary faces, no head, no queries): a shadow head is
  trained through the frozen tail by the query-free attack's own training
  (:class:`.queryfree.QueryFreeAttack`, parameters ``shadow``: :data:`SHADOW_TRAINING` by default),
  then the image is found with exact gradients through shadow head + tail. ``shadow_folds`` k > 1
  trains k shadows, the one for class c without any auxiliary photo of the classes of c's fold
  (people-disjoint: the attacker has no photo of whom it reconstructs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..base import AttackParameterError, check_choice, check_positive, check_positive_int, check_unit_interval
from .base import InversionAttack, InversionParams, placed
from .classifier_knowledge import ClassifierKnowledge, ClassifierQueryFreeKnowledge, ClassifierQueryKnowledge
from .search_space import search_space

LOSSES = ("cross-entropy", "probability")
# face-mlp split at fc1 (a 10304 -> 3000 linear shadow) on the 120 held-out AT&T images: He et al.'s
# 10 epochs at lr 1e-3 in batches of 128 left it at 3% on its own data (the sigmoid saturates);
# 60 epochs at 3e-4: 86%, and 63% on the training images it never saw
SHADOW_TRAINING = {"shadow": "same", "epochs": 60, "lr": 3e-4, "batch_size": 128}
BASES = ("grid", "faces")


@dataclass
class ClassifierParams(InversionParams):
    iterations: int = 100          # 003: 100 iterations of mi_face (the gradient step: see ``step``)
    step: float = 100.0            # 003 took 0.1: on [0, 1] pixels that moves no pixel by 0.05 in 100 steps
    loss: str = "cross-entropy"    # 003's; "probability" is Fredrikson's 1 - p_c
    start: float = 0.0             # the constant first image (Fredrikson: 0)
    patience: int = 0              # stop an image after this many steps without improvement (0: never)
    target_cost: float = 0.0       # stop an image when its cost falls below this (0: never)
    denoise: float = 0.0           # TV denoising weight of the post-processing (0: off)
    sharpen: float = 0.0           # unsharp-mask amount of the post-processing (0: off)
    samples: int = 20              # black-box: NES pairs of queries per step
    sigma: float = 0.05            # black-box: NES exploration scale (pixels)
    basis: str = "grid"            # black-box: search space, "grid" (coarse pixels) or "faces" (eigenfaces of aux)
    downsample: int = 4            # black-box, grid: this many times coarser than the image
    components: int = 40           # black-box, faces: principal components of the auxiliary faces
    max_queries: int = 4000        # black-box: queries per class at most
    shadow: dict = field(default_factory=lambda: dict(SHADOW_TRAINING))  # query-free: QueryFreeParams of the shadow
    shadow_folds: int = 1          # query-free: one shadow per fold of classes, trained without that fold's images
    seed: int = 0
    progress: bool = False

    def shadow_params(self):
        """The query-free shadow head's training, as :class:`.queryfree.QueryFreeParams` (checked)."""
        from .queryfree import QueryFreeParams

        if not isinstance(self.shadow, dict) or {"seed", "device", "progress"} & set(self.shadow):
            raise AttackParameterError(f"shadow must be a mapping of QueryFreeParams fields (not seed, device or "
                                       f"progress: those are the attack's own), got {self.shadow!r}")
        return QueryFreeParams.from_dict({**SHADOW_TRAINING, **self.shadow, "seed": self.seed,
                                          "device": self.device, "progress": self.progress})

    def validate(self) -> None:
        super().validate()
        check_positive_int("iterations", self.iterations)
        check_positive("step", self.step)
        check_choice("loss", self.loss, LOSSES)
        check_unit_interval("start", self.start)
        check_positive_int("patience", self.patience, 0)
        check_positive("target_cost", self.target_cost, allow_zero=True)
        check_positive("denoise", self.denoise, allow_zero=True)
        check_positive("sharpen", self.sharpen, allow_zero=True)
        check_positive_int("samples", self.samples)
        check_positive("sigma", self.sigma)
        check_choice("basis", self.basis, BASES)
        check_positive_int("downsample", self.downsample)
        check_positive_int("components", self.components)
        check_positive_int("max_queries", self.max_queries, 2)
        check_positive_int("seed", self.seed, 0)
        check_positive_int("shadow_folds", self.shadow_folds)
        self.shadow_params()


class ClassifierInversionAttack(InversionAttack):
    """``create("classifier-inversion/mi-face", ...).fit(knowledge).reconstruct(classes)``."""

    family = "classifier-inversion"
    name = "mi-face"
    Params = ClassifierParams
    Knowledge = ClassifierKnowledge

    def reconstruct(self, classes) -> torch.Tensor:
        """One image (N, C, H, W) in [0, 1] per class index in ``classes`` (N,)."""
        self._require_fit("reconstruct")
        k = self.knowledge
        classes = torch.as_tensor(np.asarray(classes)).long().reshape(-1)
        if len(classes) == 0 or classes.min() < 0 or classes.max() >= k.num_classes:
            raise AttackParameterError(f"classes must be a non-empty list of class indices in 0..{k.num_classes - 1}")
        if isinstance(k, ClassifierQueryKnowledge):
            best = self._estimated(classes)
        elif isinstance(k, ClassifierQueryFreeKnowledge):
            best = torch.empty(len(classes), *k.input_shape)
            for fold, shadow in enumerate(self._shadows):
                mine = classes % len(self._shadows) == fold
                if mine.any():
                    best[mine] = self._exact(nn.Sequential(shadow, k.queryfree.tail), classes[mine])
        else:
            best = self._exact(k.model, classes)
        self._stats["classes"] = len(classes)
        return postprocess(best, self.params.denoise, self.params.sharpen)

    def fit_stats(self) -> dict:
        return dict(getattr(self, "_stats", {}))

    def fit(self, knowledge) -> "ClassifierInversionAttack":
        super().fit(knowledge)
        self._stats = {"knowledge": type(knowledge).__name__}
        if isinstance(knowledge, ClassifierQueryFreeKnowledge):
            self._shadows = self._train_shadows(knowledge)
        return self

    def _train_shadows(self, knowledge: ClassifierQueryFreeKnowledge) -> list[nn.Module]:
        """One shadow head per fold of classes, trained by the query-free attack's own training on
        the auxiliary images of the other folds (all of them when there is one fold)."""
        from dataclasses import replace

        from .queryfree import QueryFreeAttack

        qk, folds, shadows, accuracy = knowledge.queryfree, self.params.shadow_folds, [], []
        for fold in range(folds):
            keep = qk.aux_labels % folds != fold if folds > 1 else torch.ones(len(qk.aux_labels), dtype=torch.bool)
            if not keep.any():
                raise AttackParameterError(f"shadow fold {fold} has no auxiliary images of the other classes")
            trained = QueryFreeAttack(self.params.shadow_params()).fit(
                replace(qk, aux_images=qk.aux_images[keep], aux_labels=qk.aux_labels[keep]))
            shadows.append(trained.shadow.cpu())
            accuracy.append(trained.shadow_accuracy)
        self._stats.update(shadow_accuracy=float(np.mean(accuracy)), aux_count=len(qk.aux_labels))
        return shadows

    def _cost(self, log_probs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        picked = log_probs.gather(1, classes.view(-1, 1).to(log_probs.device)).squeeze(1)
        return -picked if self.params.loss == "cross-entropy" else 1 - picked.exp()

    def _search(self, x: torch.Tensor, classes: torch.Tensor, step_fn, steps: int) -> torch.Tensor:
        """Fredrikson's loop around ``step_fn(x) -> (cost, new x)``: best image kept, per-image stop."""
        p = self.params
        best, best_cost = x.detach().cpu().clone(), torch.full((len(x),), float("inf"), dtype=torch.float64)
        since = torch.zeros(len(x), dtype=torch.long)
        active = torch.ones(len(x), dtype=torch.bool)
        for _ in tqdm(range(steps), desc=f"{self.key()}", disable=not p.progress, leave=False):
            cost, new = step_fn(x)
            cost = cost.detach().double().cpu()
            better = (cost < best_cost) & active
            best[better], best_cost[better] = x[better].detach().cpu(), cost[better]
            since = torch.where(better, 0, since + 1)
            if p.patience:
                active &= since < p.patience
            if p.target_cost:
                active &= best_cost > p.target_cost
            if not active.any():
                break
            x = torch.where(active.view(-1, *[1] * (x.dim() - 1)).to(x.device), new, x)
        self._stats["final_cost_mean"] = float(best_cost.mean())
        return best

    def _exact(self, model: nn.Module, classes: torch.Tensor) -> torch.Tensor:
        p, k = self.params, self.knowledge
        model = placed(model, self.device)
        x = torch.full((len(classes), *k.input_shape), p.start, device=self.device)

        def step(x):
            x = x.detach().requires_grad_(True)
            cost = self._cost(F.log_softmax(model(x), 1), classes)
            (grad,) = torch.autograd.grad(cost.sum(), x)
            return cost, (x - p.step * grad).clamp(0, 1).detach()

        return self._search(x, classes, step, p.iterations)

    def _estimated(self, classes: torch.Tensor) -> torch.Tensor:
        p, k = self.params, self.knowledge
        gen = torch.Generator().manual_seed(p.seed)
        n, s = len(classes), p.samples
        space = search_space(p, k, classes)

        def cost_of(z, cls):
            probs = k.probabilities(space.image(z)).clamp_min(1e-300)
            return self._cost(probs.log(), cls)

        # rank utilities of 2s antithetic samples (best: +0.5, worst: -0.5): the step does not depend
        # on the scale of the cost, which spans orders of magnitude between the start and the end
        utility = torch.linspace(0.5, -0.5, 2 * s)

        def step(z):
            u = torch.randn((n, s, *z.shape[1:]), generator=gen)
            u = torch.cat([u, -u], 1)
            pairs = (z.unsqueeze(1) + p.sigma * u).flatten(0, 1)
            costs = cost_of(pairs, classes.repeat_interleave(2 * s)).view(n, 2 * s)
            weights = torch.empty(n, 2 * s)
            weights.scatter_(1, costs.argsort(1), utility.expand(n, -1))
            grad = -(weights.view(n, 2 * s, *([1] * (z.dim() - 1))) * u).sum(1)
            grad = grad / grad.pow(2).mean(dim=tuple(range(1, z.dim())), keepdim=True).sqrt().clamp_min(1e-12)
            return cost_of(z, classes), z - p.step * grad

        steps = min(p.iterations, max(1, p.max_queries // (2 * s + 1)))
        best = self._search(space.start(), classes, step, steps)
        self._stats["queries_per_class"] = steps * (2 * s + 1)
        self._stats["search_dimensions"] = int(space.start()[0].numel())
        return space.image(best)


def postprocess(images: torch.Tensor, denoise: float, sharpen: float) -> torch.Tensor:
    """Fredrikson's post-processing: TV denoising, then an unsharp mask (scikit-image), per image."""
    if not denoise and not sharpen:
        return images.detach().cpu().float()
    from skimage.filters import unsharp_mask
    from skimage.restoration import denoise_tv_chambolle

    out = []
    for img in images.detach().cpu().double().numpy():
        hwc = img.transpose(1, 2, 0)
        if denoise:
            hwc = denoise_tv_chambolle(hwc, weight=denoise, channel_axis=-1)
        if sharpen:  # channel by channel: unsharp_mask with channel_axis on one channel returns garbage (1e287)
            hwc = np.stack([unsharp_mask(hwc[..., i], radius=2, amount=sharpen) for i in range(hwc.shape[-1])], -1)
        out.append(np.clip(hwc, 0, 1).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).float()
