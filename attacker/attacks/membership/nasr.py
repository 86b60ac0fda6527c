"""Nasr, Shokri, Houmansadr (S&P 2019): white-box membership inference from gradients.

Training moves the weights against each member's loss gradient, so on a member the gradient of
the loss with respect to the weights is small and shaped differently than on an unseen sample;
the last layers carry most of this signal (the paper's "last layer contains the most
information"). An attacker holding the weights computes, per sample, the gradient of the loss
with respect to the last ``gradient_layers`` parameterised layers, the loss, the output vector and
the label, and feeds them to an attack network with one component per input (fully connected
here; the paper uses convolutions over the gradient matrices) whose outputs are concatenated and
encoded into a membership probability.

The paper trains the attack network on a known subset of the target's members (its supervised
setting). Here the attacker knows none of them: it trains ``shadow_models`` shadows with the
target's recipe on random parts of its auxiliary data and learns the attack network on the
shadows' gradients, as Shokri et al. do with posteriors, then applies it to the target's weights.
The score is the attack network's logit (> 0: member). ``gradients="none"`` keeps only the
outputs, loss and label (the paper's "white-box (outputs)" column), which with the black-box
attacks on the same target gives its comparison; ``gradients="norm"`` keeps each
layer's gradient norm instead of the whole gradient, which is what a small attacker can afford
when it watches many observations (a few hundred shadow samples cannot train an attack network
on thousands of gradient entries per observation without overfitting it).

Several observations (:class:`.knowledge.WhiteBoxMembershipKnowledge` ``observed``): the
features of every observed model are concatenated, each observation with its own components. In
the federated setting the passive global attacker sees the model after several epochs (attack
accuracy grows with the epochs observed); in the fine-tuning setting it sees the model before and
after fine-tuning. The shadow is observed at the same points (``shadow_snapshots``; see
:mod:`.observations`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.env import DEVICES, resolve_device

from ...membership_metrics import membership_metrics
from ..base import AttackParameterError, check_choice, check_positive_int
from ..inversion.base import placed
from .base import MembershipAttack
from .knowledge import WhiteBoxMembershipKnowledge
from .shadows import AttackNetworkParams, shadow_signals

GRADIENTS = ("full", "norm", "none")


@dataclass
class NasrParams(AttackNetworkParams):
    gradient_layers: int = 1         # how many of the last parameterised layers' gradients are used
    gradients: str = "full"          # "full" gradients, their "norm" per layer, or "none" (white-box outputs)
    hidden: int = 64                 # width of each component and of the encoder
    epochs: int = 60
    batch_size: int = 64
    weight_decay: float = 1e-3
    device: str | None = None        # where the features and the network are computed; None: $SPLITLAB_DEVICE

    def validate(self) -> None:
        super().validate()
        check_positive_int("gradient_layers", self.gradient_layers)
        check_choice("gradients", self.gradients, GRADIENTS)
        check_choice("device", self.device, (None, *DEVICES))


def last_layers(model: nn.Module, count: int) -> list[str]:
    """Parameter names of the last ``count`` modules that hold parameters themselves."""
    owners = [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
    if count > len(owners):
        raise AttackParameterError(f"gradient_layers {count} exceeds the model's {len(owners)} parameterised layers")
    chosen = owners[-count:]
    return [f"{owner}.{p}" if owner else p for owner in chosen
            for p, _ in model.get_submodule(owner).named_parameters(recurse=False)]


def white_box_features(model: nn.Module, x: np.ndarray, y: np.ndarray, gradient_layers: int, gradients: str,
                       device: str = "cpu", batch: int = 128) -> dict[str, np.ndarray]:
    """Per-sample inputs of the attack network, by component: ``output`` (probabilities),
    ``loss`` (log loss, and the log norm of each layer's gradient unless ``gradients="none"``),
    ``gradient`` (flattened, when ``gradients="full"``)."""
    from torch.func import functional_call, grad, vmap

    model = placed(model, device).eval()  # a copy where it is elsewhere: the caller's model stays put
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = last_layers(model, gradient_layers)

    def sample_loss(chosen, xi, yi):
        out = functional_call(model, {**params, **chosen}, (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    parts: dict[str, list] = {"output": [], "loss": [], "gradient": []}
    for i in range(0, len(x), batch):
        xb = torch.as_tensor(x[i:i + batch], device=device)
        yb = torch.as_tensor(y[i:i + batch], device=device)
        with torch.no_grad():
            logits = model(xb)
            probs = torch.softmax(logits, 1)
            loss = nn.functional.cross_entropy(logits, yb, reduction="none")
        scalars = [torch.log(loss + 1e-12)[:, None]]
        if gradients != "none":
            grads = per_sample({k: params[k] for k in names}, xb, yb)
            flat = [grads[k].reshape(len(xb), -1) for k in names]
            scalars += [torch.log(g.norm(dim=1, keepdim=True) + 1e-12) for g in flat]
            if gradients == "full":
                parts["gradient"].append(torch.cat(flat, 1).cpu())
        parts["output"].append(probs.cpu())
        parts["loss"].append(torch.cat(scalars, 1).cpu())
    return {k: torch.cat(v).numpy().astype(np.float32) for k, v in parts.items() if v}


class NasrNet(nn.Module):
    """One fully connected component per input block, concatenated, encoded to one logit."""

    def __init__(self, widths: list[int], hidden: int):
        super().__init__()
        self.widths = list(widths)
        self.components = nn.ModuleList(nn.Sequential(nn.Linear(w, hidden), nn.ReLU()) for w in widths)
        self.encoder = nn.Sequential(nn.Linear(hidden * len(widths), hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = torch.split(x, self.widths, dim=1)
        return self.encoder(torch.cat([c(b) for c, b in zip(self.components, blocks)], 1)).squeeze(1)


def _bce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(output, target.float())


class NasrAttack(MembershipAttack):
    name = "nasr"
    Params = NasrParams
    Knowledge = WhiteBoxMembershipKnowledge

    def _inputs(self, models: list[nn.Module], x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The attack network's input rows; ``self._widths`` gets the width of each component block."""
        p = self.params
        blocks = [np.eye(self.knowledge.num_classes, dtype=np.float32)[y]]  # the label, once
        for model in models:
            feats = white_box_features(model, x, y, p.gradient_layers, p.gradients, self.device)
            blocks += list(feats.values())
        self._widths = [b.shape[1] for b in blocks]
        return np.concatenate(blocks, 1)

    def fit(self, knowledge: WhiteBoxMembershipKnowledge) -> "NasrAttack":
        from models.fit import fit

        super().fit(knowledge)
        p = self.params
        self.device = resolve_device(p.device, program=f"attacker {self.key()}")
        x, labels = shadow_signals(knowledge, self._inputs, p.shadow_size, [p.seed + i for i in range(p.shadow_models)],
                                   knowledge.shadow_snapshots)
        labels = labels.astype(np.float32)
        self._mean, self._std = x.mean(0), x.std(0) + 1e-6
        torch.manual_seed(p.seed)
        self.net = NasrNet(self._widths, p.hidden)
        result = fit(self.net, torch.from_numpy((x - self._mean) / self._std), torch.from_numpy(labels), loss=_bce,
                     epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay, seed=p.seed,
                     device=self.device, progress=False, desc="nasr attack network")
        self.net.cpu().eval()
        self.threshold = 0.0  # the logit of probability 0.5
        train = membership_metrics(self._predict(x), labels.astype(bool), self.threshold)
        self._stats = {"attack_train_auc": train["auc"], "attack_train_accuracy": train["accuracy"],
                       "attack_final_loss": result.last_loss, "features": int(x.shape[1]),
                       "observations": len(knowledge.observed), "device": self.device}
        return self

    def _predict(self, x: np.ndarray) -> np.ndarray:
        """The attack network's logit (a member probability > 0.5 where it is > 0; never saturates)."""
        with torch.no_grad():
            return self.net(torch.from_numpy((x - self._mean) / self._std)).numpy().astype(np.float64)

    def score(self, samples) -> np.ndarray:
        x, y = self._samples(samples)
        return self._predict(self._inputs(self.knowledge.observed, x, y))
