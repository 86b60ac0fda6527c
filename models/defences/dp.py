"""DP-SGD (Abadi et al.) as a training-time defence, through Opacus.

Why Opacus and not a loop of our own: per-sample gradients, their clipping, the Gaussian noise and
above all the privacy accounting are easy to get subtly wrong, and Opacus is the library the papers
(``../shared/papers/004``) and the field use. :class:`DPSGD` plugs into the project's one training
loop (:func:`models.fit.fit`'s ``privacy`` hook): ``PrivacyEngine.make_private_with_epsilon`` picks
the noise multiplier that reaches the target epsilon after the planned epochs, hooks per-sample
gradients into the model (``wrap_model=False``: the model keeps its class and its state-dict
names, so the stored weights load into the plain architecture) and wraps the loop's Adam in its
``DPOptimizer`` (clip each example's gradient to ``max_grad_norm``, sum, add noise). Batches are
drawn by Opacus' Poisson sampler (``DPDataLoader``, each example in each step with probability
``q = 1 / steps_per_epoch``), given a generator seeded from the run's seed so that a DP run is as
reproducible as any other; the noise has its own seeded generator on the training device.

The optimizer is the loop's Adam, not plain SGD: the privacy guarantee comes from the clipped,
noised gradient alone (what the optimizer makes of it is post-processing), so "DP-SGD" here is
DP-Adam with the same (epsilon, delta). Weight decay (Adam's coupled L2) is applied after the
noise: it depends on the weights only, not on the data, and costs no privacy.

Accounting is Rényi DP (Mironov; Opacus' ``rdp``), the moments accountant's generalisation that
paper 004 uses. Opacus' default, PRV (Gopi et al.), is tighter but slower: measured for q = 1/40
and 120 steps, eps 2 needs noise 1.06 with RDP against 0.98 with PRV (eps 8: 0.62 vs 0.58), but
each epsilon costs about 1 s with PRV against 0.02 s with RDP, and finding the noise 2-3 s against
0.4-0.6 s; the profile of a 3-epoch lenet5 run on digits had PRV at a third of the run's time.
The binary search for the noise stops within ``epsilon_tolerance`` (0.01) below the target, so the
spent epsilon read from the accountant after training lies in ``[target - tolerance, target]``
when the loop runs the planned steps (tested). At large epsilon and few steps RDP's best order is
the largest of Opacus' grid (a warning, silenced): the bound is then looser than it could be, so
the noise is a little larger than necessary, never smaller.

BatchNorm mixes the examples of a batch, which per-sample gradients (and DP) cannot allow:
:func:`make_compatible` applies Opacus' ``ModuleValidator.fix`` (BatchNorm -> GroupNorm with
``min(32, C)`` groups). That changes the architecture, so a model trained with DP records
``dp_compatible: true`` in its manifest and deployments, and :func:`models.zoo.build_model`
rebuilds the fixed architecture for it (``dp_compatible=True``).

Opacus is imported inside the functions: its import takes seconds (scipy), which a command that
does not train with DP should not pay.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SplitlabError

ACCOUNTANT = "rdp"
# Opacus' warnings that say nothing about a run here, silenced while one trains: seeded generators
# (not its secure RNG) are a choice, made for reproducibility; RDP's order grid (see above); the
# first layer's input needs no gradient, which its full backward hooks report.
_QUIET = ("Secure RNG turned off", "Optimal order is the largest alpha",
          "Full backward hook is firing when gradients are computed with respect to module outputs")


def validate_budget(epsilon: float, delta: float, max_grad_norm: float, flag: str = "--dp-") -> None:
    """Clear errors for a privacy budget no accountant can meet or a meaningless clip."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise SplitlabError(f"{flag}epsilon must be a positive finite number, got {epsilon!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise SplitlabError(f"{flag}delta must be in (0, 1), got {delta!r}")
    if not (isinstance(max_grad_norm, (int, float)) and math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise SplitlabError(f"{flag}clip (the per-sample gradient norm bound) must be a positive number, "
                            f"got {max_grad_norm!r}")


def epsilon_tolerance() -> float:
    """How far below the target Opacus' noise search may stop (its ``epsilon_tolerance`` default)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(inspect.signature(get_noise_multiplier).parameters["epsilon_tolerance"].default)


def incompatibilities(model: nn.Module) -> list[str]:
    """Why Opacus cannot train ``model`` privately (empty when it can)."""
    from opacus.validators import ModuleValidator

    return [str(e).split(".")[0] for e in ModuleValidator.validate(model, strict=False)]


def make_compatible(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` with what DP-SGD cannot train replaced (Opacus' ``ModuleValidator.fix``: BatchNorm ->
    GroupNorm), and the names of the replaced layers. The model's class and layer names are kept."""
    from opacus.validators import ModuleValidator

    before = dict(model.named_modules())
    fixed = ModuleValidator.fix(model) if incompatibilities(model) else model
    left = incompatibilities(fixed)
    if left:
        raise SplitlabError(f"Opacus cannot make this model trainable with DP-SGD: {'; '.join(left)}")
    replaced = [f"{name}: {type(before[name]).__name__} -> {type(m).__name__}"
                for name, m in fixed.named_modules() if name in before and type(before[name]) is not type(m)]
    return fixed, replaced


@dataclass
class DPSGD:
    """The ``privacy`` of :func:`models.fit.fit`: DP-SGD to ``(target_epsilon, delta)`` over the
    planned epochs. After training, :meth:`record` is what the manifest stores."""

    target_epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = ACCOUNTANT
    _engine: object = field(default=None, init=False, repr=False)
    _hooks: object = field(default=None, init=False, repr=False)
    _optimizer: object = field(default=None, init=False, repr=False)
    _sample_rate: float | None = field(default=None, init=False, repr=False)
    _quiet: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        validate_budget(self.target_epsilon, self.delta, self.max_grad_norm)

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, n: int, batch_size: int, epochs: int,
               generator: torch.Generator, device: str):
        from opacus import PrivacyEngine
        from opacus.data_loader import DPDataLoader

        problems = incompatibilities(model)
        if problems:
            raise SplitlabError(f"this model cannot be trained with DP-SGD ({'; '.join(problems)}); build it with "
                                "dp_compatible=True (models.defences.dp.make_compatible)")
        if self._engine is not None:
            raise SplitlabError("a DPSGD object accounts for one training run; make a new one for another")
        indices = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(n)), batch_size=batch_size)
        # Opacus' Poisson loader, built here so that its sampler draws from the run's seeded generator;
        # make_private is told not to convert it again (poisson_sampling=False leaves a loader as is).
        loader = DPDataLoader.from_data_loader(indices, generator=generator)
        noise = torch.Generator(device=device).manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))
        self._quiet = warnings.catch_warnings()
        self._quiet.__enter__()  # left in detach(), after the last step
        for text in _QUIET:
            warnings.filterwarnings("ignore", message=text)
        self._engine = PrivacyEngine(accountant=self.accountant)
        try:
            self._hooks, self._optimizer, loader = self._engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=loader, target_epsilon=self.target_epsilon,
                target_delta=self.delta, epochs=epochs, max_grad_norm=self.max_grad_norm, poisson_sampling=False,
                noise_generator=noise, wrap_model=False)
        except ValueError as exc:  # e.g. "The privacy budget is too low."
            raise SplitlabError(f"DP-SGD cannot reach epsilon {self.target_epsilon} (delta {self.delta}) in "
                                f"{epochs} epochs of {len(loader)} steps: {exc}") from None
        self._sample_rate = 1 / len(loader)
        return self._optimizer, loader

    def detach(self) -> None:
        if self._hooks is not None:
            self._hooks.cleanup()
            self._hooks = None
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None

    def spent_epsilon(self) -> float:
        if self._engine is None:
            raise SplitlabError("no DP training has run with this DPSGD object yet")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_QUIET[1])
            return float(self._engine.get_epsilon(self.delta))

    def record(self) -> dict:
        """The manifest's ``dp``: the budget asked for and the one spent (read from the accountant)."""
        return {"target_epsilon": self.target_epsilon, "spent_epsilon": self.spent_epsilon(), "delta": self.delta,
                "noise_multiplier": float(self._optimizer.noise_multiplier), "max_grad_norm": self.max_grad_norm,
                "sample_rate": self._sample_rate, "accountant": self.accountant,
                "epsilon_tolerance": epsilon_tolerance(), "library": "opacus"}
