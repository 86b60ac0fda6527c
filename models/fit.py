"""The one training loop: mini-batch Adam with a cosine learning-rate decay, for every network the
testbed trains (zoo models, shadow and reference models, the attacks' own networks).

Before this module the loop existed three times (model training, the black-box attack's inverse
network, the query-free attack's shadow head), each with its own seeding, schedule and progress
bar. Here it is written once, with what the three differ in as arguments: the loss (cross-entropy,
mean squared error, or any ``loss(output, target)``, e.g. a regression loss or a loss through a
frozen tail), inputs computed per batch (``inputs`` may be a callable on the batch's indices, for a
query oracle), augmentation, and hooks after each step and epoch.

:func:`fit` trains one model; :func:`fit_many` trains K models of one architecture *together*:
their weights are stacked (``torch.func.stack_module_state``) and one ``vmap``-ed forward and
backward pass serves all K, each on its own data subset in its own seeded order. Adam is
element-wise and the K losses are independent, so the sum of the K losses gives each model exactly
its own gradient and update: the result equals K calls of :func:`fit` up to float rounding
(tested; without dropout, whose masks are drawn differently). On a GPU this turns K launches of
small kernels into one of K-times larger ones; on this CPU it measured slower (see
:mod:`models.reference`).

Both are deterministic for a seed on the CPU: the order of the examples and every augmentation
draw come from a generator seeded from ``seed``; dropout draws from torch's global generator.

Two training-time defences (:mod:`models.defences`) plug into :func:`fit` rather than bringing a
loop of their own: ``decay_only`` restricts the weight decay to some parameters (L2 on the output
layer only), and ``privacy`` makes the loop differentially private: before the first step it hands
the Adam optimizer to the privacy object, which hooks per-sample gradients into the model and
returns its clipping, noising optimizer and the Poisson-sampled batches (of example indices) to run
instead of the seeded permutation. The cosine schedule, the losses, augmentation and the hooks stay
those of every other run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import SplitlabError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: dict[str, Loss] = {"cross_entropy": nn.functional.cross_entropy, "mse": nn.functional.mse_loss}


@dataclass
class FitResult:
    losses: list[float]          # mean training loss of each epoch
    epoch_seconds: list[float]
    last_loss: float             # the last step's loss (nan when no step ran, e.g. epochs=0)
    steps: int                   # optimiser steps taken


class Privacy(Protocol):
    """What :func:`fit` needs of a differentially private training (:class:`models.defences.dp.DPSGD`)."""

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, n: int, batch_size: int, epochs: int,
               generator: torch.Generator, device: str) -> tuple[torch.optim.Optimizer, Iterable]:
        """Make ``model``'s training private: returns the optimizer to step and a re-iterable of
        batches of example indices (in ``range(n)``), one pass of which is one epoch."""

    def detach(self) -> None:
        """Remove what :meth:`attach` added to the model (hooks, per-sample gradients)."""


def loss_function(loss: str | Loss) -> Loss:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise SplitlabError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)} or a callable(output, target)")
    return LOSSES[loss]


class _Track:
    """One model's view of the data: its subset (indices into ``inputs``) and its generator."""

    def __init__(self, subset, seed: int):
        self.subset = None if subset is None else torch.as_tensor(subset, dtype=torch.long)
        self.gen = torch.Generator().manual_seed(int(seed))

    def batch(self, inputs, targets, positions, augment, device):
        rows = positions if self.subset is None else self.subset[positions]
        xb = inputs(rows) if callable(inputs) else inputs[rows.to(inputs.device)]
        yb = targets[rows.to(targets.device)]
        if augment is not None:
            xb = augment(xb, self.gen)
        return xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def fit(model: nn.Module, inputs, targets: torch.Tensor, *, loss: str | Loss = "cross_entropy", epochs: int,
        batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0, device: str = "cpu",
        augment=None, channels_last: bool = False, progress: bool = True, desc: str = "fit", leave: bool = True,
        on_step=None, on_epoch=None, decay_only: Iterable[nn.Parameter] | None = None,
        privacy: Privacy | None = None) -> FitResult:
    """Train ``model`` (its parameters that require grad) on ``inputs -> targets``.

    ``inputs`` is a tensor with one row per target, or a callable(indices) -> batch (computed per
    step, e.g. features queried from an oracle). ``augment(xb, generator)`` transforms each batch.
    ``on_step(step, loss_tensor)`` runs after each optimiser step, ``on_epoch(epoch, model)``
    after each epoch (1-based; the model is left in train mode again afterwards); if it returns
    ``True``, training ends there (early stopping). The model ends on ``device`` in eval mode.
    ``epochs=0`` trains nothing.

    ``weight_decay`` is Adam's (coupled) L2 decay; ``decay_only`` limits it to those parameters
    (None: all). ``privacy`` (see :class:`Privacy`) trains with DP-SGD's clipped, noised gradients
    on Poisson-sampled batches; its hooks are removed from the model when ``fit`` returns.
    """
    n = _check(len(targets), epochs, batch_size)
    if not callable(inputs) and len(inputs) != n:
        raise SplitlabError(f"{len(inputs)} inputs for {n} targets")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=layout)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = _decay_groups(params, weight_decay, decay_only)
    loss_fn = loss_function(loss)

    def step(batches):
        xb, yb = batches[0]
        if xb.dim() == 4:
            xb = xb.contiguous(memory_format=layout)
        return loss_fn(model(xb), yb).unsqueeze(0)

    hook = None if on_epoch is None else (lambda epoch: on_epoch(epoch, model))
    track = _Track(None, seed)
    private = None if privacy is None else (
        lambda optim: privacy.attach(model, optim, n=n, batch_size=batch_size, epochs=epochs, generator=track.gen,
                                     device=device))
    try:
        results = _loop(step, groups, [track], n, _on_device(inputs, device), _on_device(targets, device),
                        model.train, epochs, batch_size, lr, augment, device, progress, desc, leave, on_step, hook,
                        private)
    finally:
        if privacy is not None:
            privacy.detach()
    model.to(memory_format=torch.contiguous_format).eval()
    return results[0]


def fit_many(models: list[nn.Module], inputs: torch.Tensor, targets: torch.Tensor, subsets, seeds, *,
             loss: str | Loss = "cross_entropy", epochs: int, batch_size: int = 128, lr: float = 1e-3,
             weight_decay: float = 0.0, device: str = "cpu", augment=None, progress: bool = True,
             desc: str = "fit", leave: bool = True) -> list[FitResult]:
    """Train K models of one architecture together (vmap), model k on ``inputs[subsets[k]]`` in the
    order drawn from ``seeds[k]``; the same as ``fit`` on each, up to float rounding.

    All subsets must have one size (every step needs one batch shape). Each model's trained
    weights are written back into it; the models end on ``device`` in eval mode. With dropout
    each model draws its own masks from torch's global generator, so the group is deterministic
    for a global seed but its masks are not those of one-by-one training.
    """
    from torch.func import functional_call, stack_module_state, vmap

    if not models:
        return []
    if not (len(models) == len(subsets) == len(seeds)):
        raise SplitlabError(f"fit_many needs one subset and one seed per model: {len(models)} models, "
                            f"{len(subsets)} subsets, {len(seeds)} seeds")
    sizes = {len(s) for s in subsets}
    if len(sizes) != 1:
        raise SplitlabError(f"fit_many trains models on subsets of one size, got sizes {sorted(sizes)}")
    n = _check(sizes.pop(), epochs, batch_size)
    for m in models:
        m.to(device).train()
    params, buffers = stack_module_state(models)  # new leaf tensors, [K, ...] each
    for name, p in params.items():
        p.requires_grad_(models[0].get_parameter(name).requires_grad)
    base = models[0]
    loss_fn = loss_function(loss)

    def one(p, b, x, y):
        return loss_fn(functional_call(base, (p, b), (x,)), y)

    # randomness="different": each model draws its own dropout masks, as separate training would
    batched = vmap(one, randomness="different")

    def step(batches):
        xs = torch.stack([xb for xb, _ in batches])
        ys = torch.stack([yb for _, yb in batches])
        return batched(params, buffers, xs, ys)

    groups = _decay_groups([p for p in params.values() if p.requires_grad], weight_decay, None)
    results = _loop(step, groups, [_Track(s, seed) for s, seed in zip(subsets, seeds)], n,
                    _on_device(inputs, device), _on_device(targets, device), lambda: [m.train() for m in models],
                    epochs, batch_size, lr, augment, device, progress, desc, leave, None, None, None)
    with torch.no_grad():
        for k, m in enumerate(models):
            for name, value in {**params, **buffers}.items():
                target = m.get_parameter(name) if name in params else m.get_buffer(name)
                target.copy_(value[k])
            m.eval()
    return results


def _check(n: int, epochs: int, batch_size: int) -> int:
    if epochs < 0:
        raise SplitlabError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise SplitlabError(f"batch_size must be at least 1, got {batch_size}")
    if n < 1:
        raise SplitlabError("nothing to train on: no examples")
    return n


def _on_device(t, device):
    return t if callable(t) else t.to(device)


def _decay_groups(params: list, weight_decay: float, decay_only) -> list[dict]:
    """Adam's parameter groups: ``weight_decay`` on ``decay_only`` (None: every parameter), none on the rest."""
    if decay_only is None:
        return [{"params": params, "weight_decay": weight_decay}] if params else []
    chosen = {id(p) for p in decay_only}
    unknown = len(chosen - {id(p) for p in params})
    if unknown:
        raise SplitlabError(f"decay_only names {unknown} parameter(s) that are not trainable parameters of the model")
    groups = [{"params": [p for p in params if id(p) in chosen], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) not in chosen], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _loop(step, groups, tracks, n, inputs, targets, set_train, epochs, batch_size, lr, augment, device, progress,
          desc, leave, on_step, on_epoch, private) -> list[FitResult]:
    """Adam + cosine decay over ``epochs`` passes of ``n`` examples for every track at once;
    ``step(batches)`` returns the tracks' losses as a tensor of shape [K]. ``private(optimizer)``
    (one track only) returns the optimizer and the batches of indices to use instead."""
    if not groups:
        raise SplitlabError(f"{desc}: nothing to train (every parameter has requires_grad=False)")
    optim = torch.optim.Adam(groups, lr=lr)
    if private is None:
        def epoch_positions():
            orders = [torch.randperm(n, generator=t.gen) for t in tracks]
            for i in range(0, n, batch_size):
                yield [order[i:i + batch_size] for order in orders]
        per_epoch = math.ceil(n / batch_size)
    else:
        optim, loader = private(optim)
        epoch_positions = lambda: ([rows] for (rows,) in loader)  # noqa: E731 - Poisson: sizes vary
        per_epoch = len(loader)
    total = max(1, epochs * per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=total)
    k = len(tracks)
    losses, seconds = [[] for _ in range(k)], []
    last = torch.full((k,), float("nan"))
    steps = 0
    bar = tqdm(total=epochs * per_epoch, desc=desc, disable=not progress, unit="batch", leave=leave,
               mininterval=0.5)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        set_train()
        epoch_sum, seen = torch.zeros(k, device=device), 0
        for i, positions in enumerate(epoch_positions()):
            batches = [t.batch(inputs, targets, rows, augment, device) for t, rows in zip(tracks, positions)]
            optim.zero_grad(set_to_none=True)
            loss = step(batches)
            loss.sum().backward()
            optim.step()
            sched.step()
            steps += 1
            size = len(batches[0][1])
            if size:  # a Poisson-sampled batch may be empty: a step (noise only) without a loss
                last = loss.detach()
                epoch_sum += last * size
                seen += size
            if on_step is not None:
                on_step(steps, loss.detach()[0] if k == 1 else last)
            bar.update(1)
            if progress and (steps % 20 == 1 or i + 1 >= per_epoch):
                bar.set_postfix(epoch=epoch, loss=f"{last.mean().item():.3f}", refresh=False)
        means = (epoch_sum / max(1, seen)).tolist()
        bad = [j for j, v in enumerate(means) if not math.isfinite(v)]
        if bad:
            which = "" if k == 1 else f" (model {bad[0]} of {k})"
            raise SplitlabError(f"{desc}: training diverged (loss {means[bad[0]]}) in epoch {epoch}{which}; "
                                "lower the learning rate")
        for j in range(k):
            losses[j].append(means[j])
        seconds.append(time.perf_counter() - t0)
        if on_epoch is not None and on_epoch(epoch) is True:
            break
    bar.close()
    last = last.tolist()
    return [FitResult(losses[j], list(seconds), float(last[j]), steps) for j in range(k)]
