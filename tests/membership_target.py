"""The overfit target the membership tests attack, built once per test session and shared.

lenet5 trained on 100 MNIST images (privacy split, 40 epochs: train accuracy 1.0, test about 0.8);
the candidates are its 100 members and 100 held-out non-members of the same pool. With 100 + 100
candidates a guessing attack's ROC AUC has a standard deviation of sqrt(201 / (12 * 100 * 100)) =
0.041, so an AUC above :data:`CHANCE_MARGIN` = 0.62 is about three standard deviations above
chance. The attacker gets 400 auxiliary images (disjoint from the candidates) and the target's
recipe; shadow and reference models live in one artifact store shared by every test, as they are
shared by the benchmarks' trials.

Import the fixture into a test module: ``from membership_target import overfit_target``.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.training import TrainOptions

TARGET = TrainOptions(arch="lenet5", dataset="mnist", epochs=40, batch_size=20, lr=3e-3, limit=100, seed=0)
CHANCE_MARGIN = 0.62
SHADOW = 100   # shadow members per shadow model: as many as the target has
AUX = 400


@pytest.fixture(scope="session")
def overfit_target(tmp_path_factory):
    from attacker.attacks.membership import WhiteBoxMembershipKnowledge
    from models import ArtifactStore, load_dataset, to_tensor
    from models.reference import obtain_model

    ds = load_dataset("mnist")
    store = ArtifactStore(tmp_path_factory.mktemp("membership-store"))
    model, manifest = obtain_model(store, TARGET, progress=False, dataset=ds)
    assert manifest["train_accuracy"] == 1.0 and manifest["test_accuracy"] < 0.9  # overfit
    members = np.asarray(manifest["members"]["indices"])
    non_members = np.asarray(manifest["non_members"]["indices"])
    idx = np.r_[members, non_members]
    return {"ds": ds, "store": store, "model": model, "members": members, "non_members": non_members,
            "samples": (to_tensor(ds.x_train[idx]).numpy(), ds.y_train[idx]),
            "is_member": np.r_[np.ones(len(members), bool), np.zeros(len(non_members), bool)],
            "knowledge": WhiteBoxMembershipKnowledge.in_process(model, ds, TARGET, store, aux_limit=AUX)}


def evaluate(attack, samples, is_member) -> dict:
    from attacker.membership_metrics import membership_metrics

    return membership_metrics(attack.score(samples), is_member, attack.threshold)
