"""Who is the attacker and who are the victims in an attribute-inference experiment, and how its
inferences are scored: shared by the harness suite (``benchmarks/suites/attribute.py``) and the
lab's ``attribute`` experiments (``attacker/lab/attribute_runner.py``), so both draw the same
images and report the same numbers.

* The attacker owns the privacy split scheme's shadow and auxiliary parts of the train split
  (:mod:`models.splits`: 50% of it, disjoint from the target's 25% of members), with their
  private attribute; the victims are people of the test split (the target never trained on them).
* Scores (scikit-learn): accuracy, macro-F1 and per-class F1 of the inferences, and the same for
  the majority-class baseline: the attacker's own most frequent class, predicted for everyone
  (what an attacker who observes nothing would guess).
"""

from __future__ import annotations

import numpy as np

from models.errors import SplitlabError

from .attributes import attribute_labels

# The parts of the privacy scheme's train split the attacker owns (models.splits).
ATTACKER_PARTS = ("shadow_train", "shadow_out", "aux")


def attacker_indices(splits: dict) -> np.ndarray:
    """The train-split indices the attacker owns, from a target's recorded ``splits`` (its manifest)
    or those of :func:`models.splits.privacy_splits`."""
    missing = [p for p in ATTACKER_PARTS if p not in (splits or {})]
    if missing:
        raise SplitlabError(f"the target's training split records no {', '.join(missing)} part: it was not "
                            "trained with the privacy split scheme, so no images are the attacker's own")
    return np.sort(np.concatenate([np.asarray(splits[p], dtype=np.int64) for p in ATTACKER_PARTS]))


def attacker_and_victims(dataset, seed: int, attribute: str, aux_limit: int | None, victims: int | None,
                         owned: np.ndarray | None = None):
    """``(aux_idx, aux_y, vic_idx, vic_y)``: the attacker's labelled images (indices into the train
    split: ``owned``, default the privacy scheme's shadow and aux parts for ``seed``), at most
    ``aux_limit`` of them, and at most ``victims`` victims of the test split; both drawn with ``seed``."""
    from models.splits import privacy_splits

    if owned is None:
        owned = attacker_indices(privacy_splits(len(dataset.x_train), seed))
    idx, labels = attribute_labels(dataset, "train", attribute)
    keep = np.isin(idx, owned)
    aux_idx, aux_y = idx[keep], labels[keep]
    if aux_limit:
        pick = np.sort(np.random.default_rng(seed).permutation(len(aux_idx))[:aux_limit])
        aux_idx, aux_y = aux_idx[pick], aux_y[pick]
    vic_idx, vic_y = attribute_labels(dataset, "test", attribute)
    if victims:
        pick = np.sort(np.random.default_rng(seed + 1).permutation(len(vic_idx))[:victims])
        vic_idx, vic_y = vic_idx[pick], vic_y[pick]
    return aux_idx, aux_y, vic_idx, vic_y


def attribute_metrics(pred, truth, aux_labels, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class F1 of ``pred``, and of the attacker's majority class (baseline)."""
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(len(classes)))
    majority = np.full_like(truth, np.bincount(aux_labels, minlength=len(classes)).argmax())
    per_class = f1_score(truth, pred, labels=labels, average=None, zero_division=0)
    return {"accuracy": float(accuracy_score(truth, pred)),
            "macro_f1": float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0)),
            "baseline_accuracy": float(accuracy_score(truth, majority)),
            "baseline_macro_f1": float(f1_score(truth, majority, labels=labels, average="macro", zero_division=0)),
            **{f"f1_{i}": float(v) for i, v in enumerate(per_class)}, "victims": int(len(truth))}
