"""The likelihood-ratio attack, LiRA (Carlini et al. 2022), online and offline.

How confident a model is on a sample depends on the sample as much as on membership: an easy
digit is classified confidently whether it was trained on or not. LiRA calibrates per sample. It
trains ``reference_models`` models with the target's recipe and looks at the distribution of the
logit-scaled confidence ``phi = log p_y - log (1 - p_y)`` (:func:`.signals.logit`, close to
Gaussian across models) on each candidate sample:

* **offline**: reference models trained on random halves of the attacker's auxiliary data, so
  every candidate is OUT of all of them; the score is the one-sided test of the target's ``phi``
  against N(mu_out, sigma_out), returned as its z value ``(phi - mu_out) / sigma_out`` (the same
  order as the paper's ``Phi(z)``, without saturating).
* **online**: reference models trained on random halves of a population made of the candidates
  and auxiliary data, in complementary pairs, so every candidate is IN exactly half of the models;
  the score is the log-likelihood ratio ``log N(phi; mu_in, sigma_in) - log N(phi; mu_out,
  sigma_out)``. The attacker trains on the candidates' images without knowing their membership
  (it is what is being inferred), as in the paper; the reference models depend on the candidates,
  so they are trained in ``score``.

The K reference models are asked for in one call (:meth:`.knowledge.MembershipKnowledge.shadow_models_on`),
so the artifact store trains the missing ones together on CUDA (:func:`models.reference.obtain_models`).

``variance="per-example"`` estimates sigma per sample across the reference models;
``"fixed"`` uses one global sigma (the standard deviation of all the signals, as in the authors'
code), which the paper recommends below about 64 reference models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from ..base import AttackParameterError, check_choice, check_positive_int
from .base import MembershipAttack
from .knowledge import MembershipKnowledge
from .signals import logit
from .shadows import ShadowParams, shadow_halves

VARIANCES = ("fixed", "per-example")
MIN_STD = 1e-6


@dataclass
class LiRAParams(ShadowParams):
    reference_models: int = 16
    online: bool = False
    variance: str = "fixed"

    def validate(self) -> None:
        super().validate()
        check_positive_int("reference_models", self.reference_models, 2)
        if not isinstance(self.online, bool):
            raise AttackParameterError(f"online must be true or false, got {self.online!r}")
        check_choice("variance", self.variance, VARIANCES)
        if self.online and self.reference_models % 2:
            raise AttackParameterError("online LiRA trains reference models in complementary pairs: "
                                       f"reference_models must be even, got {self.reference_models}")
        if self.online and self.variance == "per-example" and self.reference_models < 4:
            raise AttackParameterError("per-example variance online needs reference_models >= 4 "
                                       "(two IN and two OUT models per sample)")


def _moments(signals: np.ndarray, mask: np.ndarray, fixed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample mean and standard deviation of ``signals`` (models, samples) where ``mask``."""
    count = mask.sum(axis=0)
    mean = np.where(mask, signals, 0).sum(axis=0) / count
    if fixed:
        std = np.full_like(mean, signals[mask].std())
    else:
        std = np.sqrt(np.where(mask, (signals - mean) ** 2, 0).sum(axis=0) / np.maximum(count - 1, 1))
    return mean, np.maximum(std, MIN_STD)


class LiRAAttack(MembershipAttack):
    name = "lira"
    Params = LiRAParams
    Knowledge = MembershipKnowledge

    def fit(self, knowledge: MembershipKnowledge) -> "LiRAAttack":
        super().fit(knowledge)
        p = self.params
        knowledge._require_trainer()
        self._references = []
        if not p.online:  # reference j is shadow j of the other attacks (same members and seed: shared)
            n = len(knowledge.aux_x)
            size = knowledge.shadow_size(p.shadow_size)
            members = [shadow_halves(n, size, p.seed + j)[0] for j in range(p.reference_models)]
            self._references = knowledge.train_many_like_target(
                [(knowledge.aux_x[m], knowledge.aux_y[m], p.seed + j) for j, m in enumerate(members)])
        self._stats = {"reference_models": p.reference_models, "online": p.online}
        return self

    def score(self, samples) -> np.ndarray:
        x, y = self._samples(samples)
        target = logit(self.knowledge.query(x), y)
        fixed = self.params.variance == "fixed"
        if not self.params.online:
            out = np.stack([logit(q(x), y) for q in self._references])
            mu, sigma = _moments(out, np.ones_like(out, bool), fixed)
            return (target - mu) / sigma
        signals, inside = self._online_references(x, y)
        mu_in, sd_in = _moments(signals, inside, fixed)
        mu_out, sd_out = _moments(signals, ~inside, fixed)
        return norm.logpdf(target, mu_in, sd_in) - norm.logpdf(target, mu_out, sd_out)

    def _online_references(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signals (models, samples) of reference models trained on complementary population halves."""
        p, k = self.params, self.knowledge
        rng = np.random.default_rng(p.seed)
        size = k.shadow_size(p.shadow_size)
        extra = max(0, 2 * size - len(x))
        if extra > len(k.aux_x):
            raise AttackParameterError(f"shadow_size {size} needs {extra} auxiliary samples besides the "
                                       f"{len(x)} candidates; the attacker has {len(k.aux_x)}")
        aux = rng.choice(len(k.aux_x), extra, replace=False)
        pop_x, pop_y = np.concatenate([x, k.aux_x[aux]]), np.concatenate([y, k.aux_y[aux]])
        masks, seeds = [], []
        for j in range(p.reference_models // 2):
            half = np.zeros(len(pop_x), bool)
            half[rng.permutation(len(pop_x))[: len(pop_x) // 2]] = True
            masks += [half, ~half]
            seeds += [p.seed + 2 * j, p.seed + 2 * j + 1]
        queries = k.train_many_like_target([(pop_x[m], pop_y[m], s) for m, s in zip(masks, seeds)])
        signals = [logit(query(x), y) for query in queries]
        return np.stack(signals), np.stack([m[: len(x)] for m in masks])
