"""Deterministic, disjoint partitions of a training set for privacy experiments.

``privacy`` (the default) cuts a seeded permutation of the training images into five disjoint
parts: the target model's members (``target_train``), held-out non-members from the same pool
(``target_out``), a shadow model's members and non-members (``shadow_train``, ``shadow_out``) and
the attacker's auxiliary data (``aux``). ``full`` gives every training image to the target and
uses the test set as its non-members (the setting of accuracy benchmarks). The indices are stored
in the model's manifest, so membership ground truth is exact.
"""

from __future__ import annotations

import numpy as np

from .errors import SplitlabError

SCHEMES = {
    "privacy": {"target_train": 0.25, "target_out": 0.25, "shadow_train": 0.2, "shadow_out": 0.2, "aux": 0.1},
    "full": {"target_train": 1.0},
}


def privacy_splits(n: int, seed: int, scheme: str = "privacy") -> dict[str, np.ndarray]:
    """Index arrays (into the training set) for each part of ``scheme``; disjoint, sorted."""
    if scheme not in SCHEMES:
        raise SplitlabError(f"unknown split scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    perm = np.random.default_rng(seed).permutation(n)
    parts, start = {}, 0
    fractions = SCHEMES[scheme]
    for i, (name, frac) in enumerate(fractions.items()):
        end = n if i == len(fractions) - 1 else start + int(n * frac)
        parts[name] = np.sort(perm[start:end])
        start = end
    return parts
