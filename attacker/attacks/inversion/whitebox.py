"""White-box model inversion: regularised maximum likelihood estimation (He et al. 2019, Alg. 1).

Given the head f1 and captured features f1(x0), find x minimising, for each image independently,

    L(x) = D(f1(x), f1(x0)) + lambda * TV(x)

from a constant initial image with Adam. Differences from He et al.'s code, and why:

* **Relative feature loss** (``feature_loss="relative"``, the default): D = ||f1(x) - f1(x0)||^2 /
  ||f1(x0)||^2, so the prior's weight ``tv_weight`` means the same at every split point and for every
  target, whatever the feature scale. He et al. used the per-element mean
  (``feature_loss="mean"``) with fixed weights (lambda 0 at conv11, 1e1 at ReLU22, 1e3 at ReLU32);
  their lambda equals ours times mean(f1(x0)^2). On CPU-trained targets the deep features are small
  (mean square ~1e-2 and below), so those fixed weights are 1e3-1e5x too strong relative to the
  feature term and the optimisation collapses to flat images; the relative form avoids that
  without tuning per target.
* TV(x) = mean over pixels and channels of (dx^2 + dy^2)^(beta/2), beta = 2 by default (as in
  their code), so TV is ~0.005-0.02 for natural images.
* **Batched**: all captures are optimised at once. The total loss is the *sum* of per-image losses
  and Adam is element-wise, so each image follows exactly the trajectory it would follow alone
  (see ``benchmarks/results/whitebox_speed.md``); ``batch_size`` only bounds memory.
* **Pixel range**: ``parametrization="clamp"`` (default) takes a plain Adam step on the pixels
  and projects them back onto [0, 1]; ``"sigmoid"`` optimises logits z with x = sigmoid(z).
* The learning rate decays by cosine to 1% of ``lr`` over the run (``lr_decay="cosine"``), which
  lets the last iterations settle; ``"none"`` keeps it constant as in the paper.

Per-split defaults (used where a parameter is left ``None``) are in :data:`SPLIT_DEFAULTS`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..base import (AttackParameterError, as_float_tensor, check_choice, check_positive, check_positive_int,
                    check_unit_interval)
from models.defences import features as fdef

from .base import InversionAttack, InversionParams, module_device, placed
from .knowledge import WhiteBoxKnowledge

# Defaults per split point: first layers are nearly invertible (no prior needed, accuracy is
# iteration-limited); deeper layers lose information and need the smoothness prior.
_SHALLOW = {"iterations": 3000, "lr": 0.05, "tv_weight": 0.0}
_MIDDLE = {"iterations": 3000, "lr": 0.05, "tv_weight": 0.05}
_DEEP = {"iterations": 3000, "lr": 0.05, "tv_weight": 0.2}
# MNIST's relu2 features keep enough of the (sharp, mostly black) digits that a smoothness prior
# only blurs them: no prior, larger steps.
_MNIST_RELU2 = {"iterations": 3000, "lr": 0.1, "tv_weight": 0.0}
# he-cifar-cnn from the second block on: natural colour images need a strong smoothness prior; on
# a CPU-trained target, PSNR rose steadily with tv_weight from 0.5 to 32 at relu22 and relu32
# (400 iterations), SSIM peaked around 2-8; 8 is the compromise.
_CIFAR_DEEP = {"iterations": 3000, "lr": 0.05, "tv_weight": 8.0}
SPLIT_DEFAULTS: dict[str, dict] = {
    # lenet5 (MNIST)
    "conv1": _SHALLOW, "relu1": _SHALLOW, "pool1": _MIDDLE,
    "conv2": _MIDDLE, "relu2": _MNIST_RELU2, "pool2": _DEEP, "fc1": _DEEP, "fc2": _DEEP,
    # he-cifar-cnn (CIFAR-10)
    "conv11": _SHALLOW, "relu11": _SHALLOW, "conv12": _MIDDLE, "relu12": _MIDDLE,
    "conv21": _CIFAR_DEEP, "relu21": _CIFAR_DEEP, "conv22": _CIFAR_DEEP, "relu22": _CIFAR_DEEP,
    "pool3": _CIFAR_DEEP, "conv31": _CIFAR_DEEP, "relu31": _CIFAR_DEEP, "conv32": _CIFAR_DEEP, "relu32": _CIFAR_DEEP,
}
FALLBACK_DEFAULTS = _MIDDLE


@dataclass
class WhiteBoxParams(InversionParams):
    """Parameters of rMLE; ``None`` means the split point's default (:data:`SPLIT_DEFAULTS`)."""

    iterations: int | None = None
    lr: float | None = None
    tv_weight: float | None = None
    tv_beta: float = 2.0
    feature_loss: str = "relative"      # "relative" (||d||^2/||f0||^2) or "mean" (He et al.'s code)
    parametrization: str = "clamp"      # "clamp" (projected Adam) or "sigmoid"
    init: float = 0.5                   # the constant initial pixel value
    lr_decay: str = "cosine"            # "cosine" (to 1% of lr) or "none"
    batch_size: int = 64                # images optimised together (memory bound only)
    adam_eps: float = 1e-12
    adaptive: bool = False              # optimise through the known defence (knowledge.defended_head)
    eot_samples: int = 8                # adaptive: defence draws averaged per step (expectation over them)
    progress: bool = True

    def validate(self) -> None:
        super().validate()
        if self.iterations is not None:
            check_positive_int("iterations", self.iterations)
        if self.lr is not None:
            check_positive("lr", self.lr)
        if self.tv_weight is not None:
            check_positive("tv_weight", self.tv_weight, allow_zero=True)
        check_positive("tv_beta", self.tv_beta)
        check_choice("feature_loss", self.feature_loss, ("relative", "mean"))
        check_choice("parametrization", self.parametrization, ("clamp", "sigmoid"))
        check_unit_interval("init", self.init)
        if self.parametrization == "sigmoid" and not 0.0 < self.init < 1.0:
            raise AttackParameterError(f"init must be in (0, 1) with the sigmoid parametrization, got {self.init}")
        check_choice("lr_decay", self.lr_decay, ("cosine", "none"))
        check_positive_int("batch_size", self.batch_size)
        check_positive("adam_eps", self.adam_eps)
        if not isinstance(self.adaptive, bool):
            raise AttackParameterError(f"adaptive must be true or false, got {self.adaptive!r}")
        check_positive_int("eot_samples", self.eot_samples)

    def resolved(self, split: str | None) -> "WhiteBoxParams":
        """A copy with every ``None`` replaced by the split point's default."""
        defaults = SPLIT_DEFAULTS.get(split or "", FALLBACK_DEFAULTS)
        return self.replace(**{k: (v if getattr(self, k) is None else getattr(self, k)) for k, v in defaults.items()})


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per-image TV: mean over (C, H-1, W-1) of (dx^2 + dy^2)^(beta/2); shape (N,)."""
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    sq = dx * dx + dy * dy
    if beta != 2.0:
        sq = (sq + 1e-8).pow(beta / 2.0)
    return sq.flatten(1).mean(1)


def rmle_invert(head: nn.Module, features: torch.Tensor, input_shape, params: WhiteBoxParams,
                desc: str = "whitebox", samples: int = 1, skip_zeros: bool = False) -> tuple[torch.Tensor, dict]:
    """Invert ``features`` (N, *feature_shape) through ``head``; params must be resolved.

    ``samples`` > 1: ``head`` is random (a defence drawing noise or a dropout mask per call) and the
    feature loss of each step is the mean over that many draws, an estimate of its expectation over
    the defence (expectation over transformation). ``skip_zeros``: zeros of ``features`` are left
    out of the feature loss (values a dropout defence dropped).

    The pixels are optimised where ``head`` is (its device); ``features`` may be anywhere. Returns
    the images (N, C, H, W) in [0, 1] as a CPU tensor and statistics (final per-image feature loss,
    seconds).
    """
    if params.iterations is None or params.lr is None or params.tv_weight is None:
        raise AttackParameterError("rmle_invert needs resolved parameters (call params.resolved(split))")
    started = time.perf_counter()
    device = module_device(head)
    outputs, losses = [], []
    n = len(features)
    chunks = range(0, n, params.batch_size)
    bar = tqdm(total=params.iterations * len(chunks), desc=desc, unit="it", disable=not params.progress,
               leave=False, mininterval=0.5)
    for start in chunks:
        target = features[start:start + params.batch_size].to(device)
        x, loss = _invert_chunk(head, target, tuple(input_shape), params, bar, samples, skip_zeros)
        outputs.append(x.cpu())
        losses.append(loss.cpu())
    bar.close()
    stats = {"seconds": time.perf_counter() - started, "iterations": params.iterations,
             "feature_loss": torch.cat(losses).tolist()}
    return torch.cat(outputs), stats


def _invert_chunk(head, target, input_shape, p: WhiteBoxParams, bar, samples: int = 1,
                  skip_zeros: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    n, device = len(target), target.device
    flat_target = target.flatten(1)
    weight = (flat_target != 0).to(flat_target.dtype) if skip_zeros else 1.0
    if p.feature_loss == "relative":
        scale = flat_target.pow(2).sum(1).clamp_min(1e-12)
    else:
        scale = torch.full((n,), float(flat_target.shape[1]), device=device)
    start = math.log(p.init / (1 - p.init)) if p.parametrization == "sigmoid" else float(p.init)
    var = torch.full((n, *input_shape), start, device=device, requires_grad=True)
    opt = torch.optim.Adam([var], lr=p.lr, eps=p.adam_eps)
    feat = torch.zeros(n, device=device)
    for t in range(p.iterations):
        if p.lr_decay == "cosine":
            for group in opt.param_groups:
                group["lr"] = p.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / p.iterations)))
        opt.zero_grad(set_to_none=True)
        x = torch.sigmoid(var) if p.parametrization == "sigmoid" else var
        out = head(x.repeat(samples, *([1] * len(input_shape)))).reshape(samples, n, -1)
        feat = ((out - flat_target).pow(2) * weight).sum(2).mean(0) / scale
        loss = feat.sum()
        if p.tv_weight > 0:
            loss = loss + p.tv_weight * total_variation(x, p.tv_beta).sum()
        loss.backward()
        opt.step()
        if p.parametrization == "clamp":
            with torch.no_grad():
                var.clamp_(0.0, 1.0)
        bar.update(1)
    with torch.no_grad():
        x = torch.sigmoid(var) if p.parametrization == "sigmoid" else var.clamp(0.0, 1.0)
    return x.detach(), feat.detach()


class WhiteBoxAttack(InversionAttack):
    """rMLE with the head known (captured ``GetHead`` payload or the artifact store)."""

    name = "whitebox"
    Params = WhiteBoxParams
    Knowledge = WhiteBoxKnowledge

    def fit(self, knowledge: WhiteBoxKnowledge) -> "WhiteBoxAttack":
        super().fit(knowledge)
        self.resolved = self.params.resolved(knowledge.split)
        # adaptive (its parameter, or knowledge of the defence) against an undefended (or deterministic)
        # deployment is the naive attack: nothing to average
        self.adaptive = (self.params.adaptive or knowledge.adaptive) and knowledge.defended_head is not None
        self.head = placed(knowledge.defended_head if self.adaptive else knowledge.head, self.device)
        random = self.adaptive and any(d.random and not isinstance(d, fdef.Dropout) for d in knowledge.defences)
        self.samples = self.params.eot_samples if random else 1
        self.skip_zeros = self.adaptive and fdef.masks_by_zeros(knowledge.defences)
        self.fit_seconds = 0.0
        return self

    def reconstruct(self, features) -> torch.Tensor:
        self._require_fit("reconstruct")
        k = self.knowledge
        target = as_float_tensor("features", features, k.feature_shape)
        images, self.last_stats = rmle_invert(self.head, target, k.input_shape, self.resolved,
                                              desc=f"whitebox {k.split or ''}".strip(), samples=self.samples,
                                              skip_zeros=self.skip_zeros)
        return images
