"""A small MNIST target shared by the attack tests (trained once per test process)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

N_TRAIN = 8000


@dataclass
class Target:
    model: torch.nn.Module
    x_train: torch.Tensor     # the target's training images (the "same set")
    y_train: torch.Tensor
    x_eval: torch.Tensor      # ten test images, one per class (never trained on)
    mean_image: torch.Tensor  # the training set's mean image, as a baseline reconstruction
    test_accuracy: float


@functools.lru_cache(maxsize=1)
def mnist_target() -> Target:
    """lenet5 trained for 2 epochs on 8000 MNIST images (about 6 s on one thread)."""
    from models import load_dataset, to_tensor
    from models.training import TrainOptions, train

    ds = load_dataset("mnist")
    model, manifest = train(TrainOptions(arch="lenet5", dataset="mnist", epochs=2, limit=N_TRAIN, scheme="full",
                                         seed=0), progress=False, dataset=ds)
    members = np.asarray(manifest["members"]["indices"])
    idx = [int(np.flatnonzero(ds.y_test == c)[0]) for c in range(10)]
    x_train = to_tensor(ds.x_train[members])
    return Target(model.eval(), x_train, torch.from_numpy(ds.y_train[members]), to_tensor(ds.x_test[idx]),
                  x_train.mean(0, keepdim=True), manifest["test_accuracy"])


def baseline_psnr(target: Target) -> float:
    from attacker.metrics import image_metrics

    return image_metrics(target.mean_image.expand_as(target.x_eval), target.x_eval)["psnr_mean"]
