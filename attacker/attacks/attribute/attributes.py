"""The private attributes an attribute-inference attacker is after, as class labels.

A target is trained for one task (UTKFace: gender) and what it computes leaks others it was never
asked about (Song and Shmatikov, "Overlearning reveals sensitive attributes", 2019; the course
project's task 3). The dataset loader keeps those others as per-image ``attributes``; this module
turns them into classes an attack can be trained and scored on, in one place, so the suite, the
tests and any caller label the same image the same way:

* ``race``: UTKFace's five classes (White, Black, Asian, Indian, Others); images whose race is
  missing in the file names (``-1``, 3 of 23,707) are left out;
* ``age-band``: age in four bands, 0-19, 20-39, 40-59 and 60+.
"""

from __future__ import annotations

import numpy as np

from models.errors import SplitlabError

AGE_EDGES = (20, 40, 60)
ATTRIBUTES: dict[str, list[str]] = {
    "race": ["White", "Black", "Asian", "Indian", "Others"],
    "age-band": ["0-19", "20-39", "40-59", "60+"],
}


def attribute_classes(attribute: str) -> list[str]:
    if attribute not in ATTRIBUTES:
        raise SplitlabError(f"unknown attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")
    return ATTRIBUTES[attribute]


def attribute_labels(dataset, split: str, attribute: str) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, labels)``: the images of ``dataset``'s ``split`` that have ``attribute``, and its class."""
    attribute_classes(attribute)
    attrs = dataset.attributes_train if split == "train" else dataset.attributes_test
    raw = "race" if attribute == "race" else "age"
    if raw not in attrs:
        raise SplitlabError(f"{dataset.name} has no {raw!r} attribute (it has: {', '.join(attrs) or 'none'})")
    values = np.asarray(attrs[raw]).astype(np.int64)
    labels = values if attribute == "race" else np.digitize(values, AGE_EDGES)
    keep = np.flatnonzero(values >= 0)
    return keep, labels[keep]
