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
* **black-box** (the API's probabilities only): a gradient-free estimate, NES with antithetic
  Gaussian directions (Wierstra et al.; Ilyas et al. 2018), ``samples`` pairs of queries per step.
  The search runs on a grid ``downsample`` times coarser than the image, bilinearly upsampled:
  10,304 pixels of a 112x92 face are too many directions to estimate from tens of queries a step,
  and a face's identity lives in its low frequencies. Each step moves by ``step`` times the
  estimate divided by its mean magnitude (a normalised step: the estimate's scale is arbitrary).
  ``max_queries`` bounds the queries per class.

The tail alone cannot give an image (see :mod:`.classifier_knowledge`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..base import AttackParameterError, check_choice, check_positive, check_positive_int, check_unit_interval
from .base import InversionAttack, InversionParams, placed
from .classifier_knowledge import ClassifierKnowledge, ClassifierQueryKnowledge

LOSSES = ("cross-entropy", "probability")


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
    downsample: int = 4            # black-box: search grid this many times coarser than the image
    max_queries: int = 4000        # black-box: queries per class at most
    seed: int = 0
    progress: bool = False

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
        check_positive_int("downsample", self.downsample)
        check_positive_int("max_queries", self.max_queries, 2)
        check_positive_int("seed", self.seed, 0)


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
        else:
            best = self._exact(classes)
        self._stats["classes"] = len(classes)
        return postprocess(best, self.params.denoise, self.params.sharpen)

    def fit_stats(self) -> dict:
        return dict(getattr(self, "_stats", {}))

    def fit(self, knowledge) -> "ClassifierInversionAttack":
        super().fit(knowledge)
        self._stats = {"knowledge": type(knowledge).__name__}
        return self

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
            x = torch.where(active.view(-1, 1, 1, 1).to(x.device), new, x)
        self._stats["final_cost_mean"] = float(best_cost.mean())
        return best

    def _exact(self, classes: torch.Tensor) -> torch.Tensor:
        p, k = self.params, self.knowledge
        model = placed(k.model, self.device)
        x = torch.full((len(classes), *k.input_shape), p.start, device=self.device)

        def step(x):
            x = x.detach().requires_grad_(True)
            cost = self._cost(F.log_softmax(model(x), 1), classes)
            (grad,) = torch.autograd.grad(cost.sum(), x)
            return cost, (x - p.step * grad).clamp(0, 1).detach()

        return self._search(x, classes, step, p.iterations)

    def _estimated(self, classes: torch.Tensor) -> torch.Tensor:
        p, k = self.params, self.knowledge
        c, h, w = k.input_shape
        grid = (max(1, h // p.downsample), max(1, w // p.downsample))
        gen = torch.Generator().manual_seed(p.seed)
        n, s = len(classes), p.samples

        def image(z):
            return F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)

        def cost_of(z, cls):
            probs = k.probabilities(image(z)).clamp_min(1e-300)
            return self._cost(probs.log(), cls)

        def step(z):
            u = torch.randn((n, s, c, *grid), generator=gen)
            pairs = torch.cat([z.unsqueeze(1) + p.sigma * u, z.unsqueeze(1) - p.sigma * u], 1).flatten(0, 1)
            costs = cost_of(pairs, classes.repeat_interleave(2 * s)).view(n, 2 * s).float()
            diff = (costs[:, :s] - costs[:, s:]).view(n, s, 1, 1, 1)
            grad = (diff * u).mean(1) / (2 * p.sigma)
            grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
            return cost_of(z, classes), z - p.step * grad

        steps = min(p.iterations, max(1, p.max_queries // (2 * s + 1)))
        z = torch.full((n, c, *grid), p.start)
        best = self._search(z, classes, step, steps)
        self._stats["queries_per_class"] = steps * (2 * s + 1)
        return image(best)


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
