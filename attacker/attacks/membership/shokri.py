"""Shokri et al. (2017): shadow models and an attack classifier on sorted posteriors.

The attacker trains ``shadow_models`` models with the target's recipe on random halves of its own
data, so for each shadow it knows which samples were members. The shadows' answers on their
members (label 1) and on the other half (label 0) train a binary attack classifier; applied to
the target's answers it scores membership. The classifier sees the posterior vector sorted in
descending order, either whole (``posteriors="all"``) or its three largest entries (``"top3"``,
Salem et al.'s simplification), the two settings of the course project's Tables 1-4
(``003_7cab5165b2ec823a.txt``). Its attack model is an MLP with one hidden layer of 128 ReLU
units, L2 1e-7, learning rate 1e-3, which is what is used here (scikit-learn's ``MLPClassifier``,
Adam, up to ``epochs`` passes; batches of 32 instead of their 10, and no learning-rate decay).

Shokri et al. train one attack model per class; the course project (and this implementation) uses
one model for all classes, which needs fewer shadow samples per model and does as well once the
posteriors are sorted. The decision threshold is the classifier's probability 0.5.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from ...membership_metrics import membership_metrics
from ..base import check_choice
from .base import MembershipAttack
from .knowledge import MembershipKnowledge
from .shadows import AttackNetworkParams, shadow_signals

POSTERIORS = {"top3": 3, "all": None}


def sorted_posteriors(probs: np.ndarray, keep: int | None) -> np.ndarray:
    """Each row sorted in descending order, its ``keep`` largest entries (all when None)."""
    s = -np.sort(-np.asarray(probs, dtype=np.float64), axis=1)
    return s[:, :keep] if keep else s


@dataclass
class ShokriParams(AttackNetworkParams):
    """The attack MLP's settings default to the course project's (one hidden layer of 128, L2 1e-7)."""

    posteriors: str = "all"          # "all" or "top3"

    def validate(self) -> None:
        super().validate()
        check_choice("posteriors", self.posteriors, tuple(POSTERIORS))


class ShokriAttack(MembershipAttack):
    name = "shokri"
    Params = ShokriParams
    Knowledge = MembershipKnowledge

    def _features(self, query, x, y) -> np.ndarray:
        return sorted_posteriors(query(x), POSTERIORS[self.params.posteriors])

    def fit(self, knowledge: MembershipKnowledge) -> "ShokriAttack":
        super().fit(knowledge)
        p = self.params
        x, y = shadow_signals(knowledge, self._features, p.shadow_size, [p.seed + i for i in range(p.shadow_models)])
        self.classifier = MLPClassifier((p.hidden,), alpha=p.weight_decay, batch_size=p.batch_size,
                                        learning_rate_init=p.lr, max_iter=p.epochs, random_state=p.seed,
                                        early_stopping=False)
        with warnings.catch_warnings():  # a capped number of epochs is the recipe, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.classifier.fit(x, y)
        self.threshold = 0.5
        train = membership_metrics(self.classifier.predict_proba(x)[:, 1], y, self.threshold)
        self._stats = {"shadow_samples": int(len(y)), "attack_train_accuracy": train["accuracy"],
                       "attack_train_auc": train["auc"]}
        return self

    def score(self, samples) -> np.ndarray:
        x, y = self._samples(samples)
        return self.classifier.predict_proba(self._features(self.knowledge.query, x, y))[:, 1]
