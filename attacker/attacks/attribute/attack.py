"""Attribute inference: a classifier from what the attacker observes to a private attribute.

The attack of the course project's task 3 (after Song and Shmatikov 2019): an MLP with hidden
layers of 128 and 64 ReLU units (the target's FC sizes), trained with Adam on the attacker's own
labelled images' observations, then applied to the victims'. ``infer(observations) -> labels``.

Observations are made comparable before the MLP sees them, and the same way for the attacker's
images and the victims':

* features of a conv split point are average-pooled to at most ``pool`` x ``pool`` per channel
  (conv1's 16x30x30 would give an MLP 14,400 inputs for 10k training images); flat ones pass;
* released probabilities are taken as log-probabilities (a softmax squashes confident answers
  to 0 and 1, their logs keep the margin);
* every input dimension is standardised with the auxiliary data's mean and std.

The two attacks differ only in what they observe, so that each refuses the other's knowledge:
``attribute/features`` (:class:`FeatureAttributeAttack`) and ``attribute/outputs``
(:class:`OutputAttributeAttack`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.env import DEVICES, resolve_device

from ..base import (Attack, AttackParameterError, AttackParams, check_choice, check_positive, check_positive_int)
from .knowledge import AttributeKnowledge, FeatureKnowledge, OutputKnowledge


@dataclass
class AttributeParams(AttackParams):
    hidden: tuple[int, ...] = (128, 64)   # the attack MLP's hidden layers (003: 128, 64)
    epochs: int = 50                      # 003: 50
    batch_size: int = 128                 # 003: 128
    lr: float = 1e-3                      # 003: 1e-3
    weight_decay: float = 1e-7            # 003: reg 1e-7
    pool: int = 8                         # conv features average-pooled to at most pool x pool
    seed: int = 0
    device: str | None = None             # "cpu" or "cuda"; None: $SPLITLAB_DEVICE, else the CPU
    progress: bool = False

    def validate(self) -> None:
        if isinstance(self.hidden, list):
            self.hidden = tuple(self.hidden)
        if not isinstance(self.hidden, tuple):
            raise AttackParameterError(f"hidden must be a list of layer widths, got {self.hidden!r}")
        for width in self.hidden:
            check_positive_int("hidden", width)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive_int("pool", self.pool)
        check_positive_int("seed", self.seed, 0)
        check_choice("device", self.device, (None, *DEVICES))


class AttributeAttack(Attack):
    """``Attack(params).fit(knowledge).infer(observations)``; ``predict_proba`` gives the class probabilities."""

    family = "attribute"
    Params = AttributeParams
    Knowledge = AttributeKnowledge

    def fit(self, knowledge: AttributeKnowledge) -> "AttributeAttack":
        from models.fit import fit

        super().fit(knowledge)
        p = self.params
        self.device = resolve_device(p.device, program=f"attacker {self.key()}")
        x = self._prepare(knowledge.observe(knowledge.aux_images))
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        x = torch.from_numpy((x - self.mean) / self.std)
        y = torch.from_numpy(knowledge.aux_labels)
        torch.manual_seed(p.seed)
        widths = [x.shape[1], *p.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.model = nn.Sequential(*layers, nn.Linear(widths[-1], knowledge.num_classes))
        fit(self.model, x, y, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
            seed=p.seed, device=self.device, progress=p.progress, desc=f"{self.key()} classifier")
        self._stats = {"aux_samples": len(x), "queries": knowledge.queries, "inputs": int(x.shape[1]),
                       "attack_train_accuracy": float((self._predict(x).argmax(1) == y.numpy()).mean())}
        return self

    def fit_stats(self) -> dict:
        return dict(getattr(self, "_stats", {}))

    def _prepare(self, obs: np.ndarray) -> np.ndarray:  # overridden per observation
        return obs.reshape(len(obs), -1)

    def _predict(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([F.softmax(self.model(x[i:i + 4096].to(self.device)), 1).cpu()
                              for i in range(0, len(x), 4096)]).numpy()

    def predict_proba(self, observations) -> np.ndarray:
        """Class probabilities (N, classes) for the victims' observations."""
        self._require_fit("infer")
        obs = as_observations(observations)
        x = self._prepare(obs)
        if x.shape[1] != len(self.mean):
            raise AttackParameterError(f"observations give {x.shape[1]} inputs, the attack was fitted on "
                                       f"{len(self.mean)}: are they of the same deployment?")
        return self._predict(torch.from_numpy((x - self.mean) / self.std))

    def infer(self, observations) -> np.ndarray:
        """The inferred attribute class of each observation (N,)."""
        return self.predict_proba(observations).argmax(1)


def as_observations(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    obs = np.asarray(value, dtype=np.float32)
    if obs.ndim < 2 or len(obs) == 0 or not np.isfinite(obs).all():
        raise AttackParameterError(f"observations must be a finite non-empty batch (N, ...), got shape {obs.shape}")
    return obs


class FeatureAttributeAttack(AttributeAttack):
    name = "features"
    Knowledge = FeatureKnowledge

    def _prepare(self, obs: np.ndarray) -> np.ndarray:
        if obs.ndim == 4 and max(obs.shape[2:]) > self.params.pool:
            pooled = F.adaptive_avg_pool2d(torch.from_numpy(obs), (min(obs.shape[2], self.params.pool),
                                                                   min(obs.shape[3], self.params.pool)))
            obs = pooled.numpy()
        return obs.reshape(len(obs), -1)


class OutputAttributeAttack(AttributeAttack):
    name = "outputs"
    Knowledge = OutputKnowledge

    def _prepare(self, obs: np.ndarray) -> np.ndarray:
        if obs.ndim != 2 or obs.min() < 0 or not np.allclose(obs.sum(1), 1, atol=1e-3):
            raise AttackParameterError("the output attack observes released probabilities (N, classes) that sum "
                                       "to 1; apply a softmax to captured logits")
        return np.log(np.clip(obs, 1e-12, None))
