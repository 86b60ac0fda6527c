"""What a white-box attacker sees of a model over time: Nasr et al.'s federated and fine-tuning settings.

Nasr et al. (2019) attack not only a released model but one they watch change:

* **federated**, the passive global attacker (the parameter aggregator): it sees the model after
  several training epochs (rounds) and uses every observation; attack accuracy grows with the
  epochs observed. At our scale one training run stands for the federation (a single participant
  whose local data are the members), and :func:`train_observed` keeps the model after each
  observed epoch of the target's recipe.
* **fine-tuning**: a model trained on general data is fine-tuned on a specialised set and the
  attacker sees both versions; :func:`fine_tune` continues training a copy on the new set with
  the same loop.

The attack (:class:`.nasr.NasrAttack`) needs its shadow observed at the same points; the
``*_snapshot_trainer`` functions build the ``snapshot_trainer`` of
:class:`.knowledge.WhiteBoxMembershipKnowledge` from the attacker's recipe (:class:`.knowledge.TargetRecipe`).
Snapshots are kept in memory: a model after epoch 10 of a 40-epoch cosine schedule is not the
model of any stored training spec.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..base import AttackParameterError, check_positive, check_positive_int
from .knowledge import TargetRecipe


def _epochs(observe: Sequence[int], total: int) -> list[int]:
    chosen = sorted({int(e) for e in observe})
    if not chosen or chosen[0] < 1 or chosen[-1] > total:
        raise AttackParameterError(f"observed epochs must lie in 1..{total}, got {list(observe)!r}")
    return chosen


def train_observed(spec, dataset, observe: Sequence[int]) -> list[nn.Module]:
    """Train per ``spec`` (a ``TrainOptions``) and return the model after each epoch in ``observe``."""
    from models.env import resolve_device
    from models.fit import fit
    from models.training import augment_batch, prepare

    wanted = _epochs(observe, spec.epochs)
    device = resolve_device(spec.device, "membership observations")  # CUDA asked for, none here: the CPU
    job = prepare(spec, dataset)
    seen: list[nn.Module] = []

    def keep(epoch: int, model: nn.Module) -> None:
        if epoch in wanted:
            seen.append(copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval())

    fit(job.model, *job.train_tensors(), epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr,
        weight_decay=spec.weight_decay, seed=spec.seed, device=device,
        augment=augment_batch if spec.augment else None, channels_last=len(dataset.input_shape) == 3,
        progress=False, on_epoch=keep)
    return seen


def fine_tune(model: nn.Module, images, labels, *, epochs: int, lr: float, batch_size: int = 32,
              weight_decay: float = 0.0, seed: int = 0, device: str = "cpu") -> nn.Module:
    """A copy of ``model`` trained further on ``(images, labels)`` (the original is left as it is)."""
    from models.fit import fit

    check_positive_int("epochs", epochs)
    check_positive("lr", lr)
    tuned = copy.deepcopy(model)
    for p in tuned.parameters():
        p.requires_grad_(True)
    fit(tuned, torch.as_tensor(np.asarray(images, dtype=np.float32)), torch.as_tensor(np.asarray(labels)).long(),
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, device=device,
        progress=False)
    return tuned.eval()


def epoch_snapshot_trainer(recipe: TargetRecipe, observe: Sequence[int]):
    """Shadows of the federated setting: the recipe's model after each observed epoch."""
    _epochs(observe, recipe.options.epochs)

    def train(images, labels, seed: int) -> list[nn.Module]:
        spec = recipe.spec(recipe.indices_of(images, labels), seed)
        return train_observed(dataclasses.replace(spec, device=recipe.device), recipe.dataset, observe)

    return train


def fine_tune_snapshot_trainer(recipe: TargetRecipe, general_x, general_y, *, epochs: int, lr: float,
                               batch_size: int = 32):
    """Shadows of the fine-tuning setting: a general shadow (the recipe on ``general``) and its
    copy fine-tuned on the shadow's members. ``general`` should be attacker data outside the aux
    samples the attack draws shadow members and non-members from."""
    check_positive_int("epochs", epochs)
    check_positive("lr", lr)

    def train(images, labels, seed: int) -> list[nn.Module]:
        general = recipe(general_x, general_y, seed)
        return [general, fine_tune(general, images, labels, epochs=epochs, lr=lr, batch_size=batch_size,
                                   seed=seed, device=recipe.device)]

    return train
