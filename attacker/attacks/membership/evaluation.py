"""The samples a membership attack is scored on: the target's own members and held-out non-members.

The target's manifest records exactly which training images it trained on and which it held out
(:mod:`models.splits`, the privacy scheme), so membership ground truth is exact. Every place that
scores a membership attack (the benchmark suite's trials, the lab's membership experiments) draws
its evaluation samples here, seeded, so the same seed scores the same samples everywhere. The
attack itself never sees this list, only the images and labels.
"""

from __future__ import annotations

import numpy as np

from models.errors import SplitlabError


def evaluation_samples(dataset, manifest: dict, counts: dict, seed: int):
    """``(x, y, is_member)``: ``counts["members"]`` members and ``counts["non_members"]`` held-out
    non-members of the target, drawn by ``seed``, members first."""
    from models.datasets import to_tensor

    rng = np.random.default_rng(seed)
    picks = []
    for part, count in (("members", counts["members"]), ("non_members", counts["non_members"])):
        info = manifest[part]
        if info["split"] != "train":
            raise SplitlabError(f"the target's {part} are in its {info['split']} split; membership trials need a "
                                "privacy-scheme target (members and non-members from the train split)")
        pool = np.asarray(info["indices"])
        if count > len(pool):
            raise SplitlabError(f"evaluation asks for {count} {part}, the target has {len(pool)}")
        picks.append(np.sort(rng.choice(pool, count, replace=False)))
    idx = np.concatenate(picks)
    is_member = np.r_[np.ones(len(picks[0]), bool), np.zeros(len(picks[1]), bool)]
    return to_tensor(dataset.x_train[idx]).numpy(), dataset.y_train[idx].astype(np.int64), is_member
