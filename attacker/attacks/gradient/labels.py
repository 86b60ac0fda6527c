"""iDLG's label recovery (Zhao et al. 2020) and its usual extension to batches.

For cross-entropy after a softmax, the gradient of the mean loss with respect to the classifier's
bias is g_k = mean_b(p_bk) - n_k / B, where n_k is the number of images of class k in the batch of
B: negative exactly for the classes present (p < 1), positive for the others. The weight's row k
is the same factor times the (non-negative, after ReLU / Sigmoid / pooling) penultimate
activations, so its row sum has the same sign. Hence:

* **batch 1**: the label is the class with the negative entry (``argmin``): exact whenever the
  model does not give the true class probability 1 (float32: unless its loss underflows).
* **batch B > 1**: the *set* of classes present is recovered exactly from the bias gradient (its
  negative entries); multiplicities are estimated as in LLG (Wainakh et al. 2022): with the absent
  classes' mean entry m as the estimate of mean_b(p_bk), n_k ~ B (m - g_k); each present class gets
  one image, the rest go greedily to the largest remainders. Repeated labels are therefore
  approximate; the row-sum signal (bias not observed) mixes the activations in and is approximate
  beyond batch 1 too. The attacks' ``labels="optimise"`` needs none of this.

The classifier is the last ``nn.Linear`` with ``num_classes`` outputs; its gradient must be among
the observed ones (not so with ``observe="stem"``): a clear error otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import AttackParameterError


def classifier_names(model: nn.Module, num_classes: int) -> tuple[str, str | None]:
    """(weight name, bias name or None) of the last ``nn.Linear`` with ``num_classes`` outputs."""
    found = None
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = (f"{path}.weight", f"{path}.bias" if module.bias is not None else None)
    if found is None:
        raise AttackParameterError(f"iDLG label recovery needs a linear classifier with {num_classes} outputs; "
                                   "the model has none")
    return found


def recover_labels(model: nn.Module, gradients: dict[str, torch.Tensor], batch_size: int,
                   num_classes: int) -> torch.Tensor:
    """The batch's labels (int64, sorted by class) from the classifier's observed gradient."""
    weight, bias = classifier_names(model, num_classes)
    if bias is not None and bias in gradients:
        signal = gradients[bias].detach().double().cpu()
    elif weight in gradients:
        signal = gradients[weight].detach().double().cpu().sum(1)
    else:
        raise AttackParameterError(f"iDLG label recovery reads the classifier's gradient ({weight}"
                                   f"{' or ' + bias if bias else ''}), which this attacker does not observe; "
                                   "observe it, or optimise the labels (labels='optimise')")
    if batch_size == 1:
        return signal.argmin().reshape(1)
    present = [int(k) for k in torch.argsort(signal) if signal[k] < 0][:batch_size]
    if not present:
        present = [int(signal.argmin())]
    absent = [k for k in range(num_classes) if k not in present]
    mean_p = float(signal[absent].clamp_min(0).mean()) if absent else 0.0
    estimate = {k: batch_size * (mean_p - float(signal[k])) for k in present}
    counts = dict.fromkeys(present, 1)
    for _ in range(batch_size - len(present)):
        k = max(present, key=lambda c: estimate[c] - counts[c])
        counts[k] += 1
    return torch.tensor(sorted(k for k, n in counts.items() for _ in range(n)), dtype=torch.int64)
