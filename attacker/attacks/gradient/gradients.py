"""The one computation both sides of gradient inversion make: the gradient of the batch's mean
cross-entropy loss with respect to the observed parameters.

The federated client computes it on its private batch and sends it (:func:`client_gradients`);
the attacker computes it on a dummy batch, keeping the graph (``create_graph=True``) so that the
distance between the two can be differentiated with respect to the dummy pixels (and labels).
Using the same function for both is what makes an exact reconstruction give a zero distance.

Both run the model in **eval mode** (BatchNorm's running statistics, no dropout): the function
the client differentiates is then a function of its batch alone, which the attacker, holding the
same weights, replicates exactly. A train-mode client (BatchNorm on the batch's own statistics)
would also leak those statistics, an extra the attacks here do not assume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def batch_loss(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch; ``targets`` are class indices (N,) or probabilities (N, K)."""
    logits = model(images)
    if targets.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(logits, targets)
    return torch.mean(torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1))


def loss_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, names,
                   create_graph: bool = False) -> tuple[torch.Tensor, ...]:
    """d batch_loss / d parameter for each of ``names`` (in that order)."""
    params = dict(model.named_parameters())
    return torch.autograd.grad(batch_loss(model, images, targets), [params[n] for n in names],
                               create_graph=create_graph)


def client_gradients(model: nn.Module, images, labels, observed=None) -> dict[str, torch.Tensor]:
    """What a federated client sends for its private batch: name -> gradient of the mean CE loss,
    for the ``observed`` parameter names (default: all of them), as CPU tensors.

    The model is run in eval mode (the module's mode is restored afterwards) on its own device.
    """
    device = next(model.parameters()).device
    x = torch.as_tensor(images, dtype=torch.float32).to(device)
    y = torch.as_tensor(labels, dtype=torch.int64).to(device)
    names = list(observed) if observed is not None else [n for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            grads = loss_gradients(model, x, y, names)
    finally:
        model.train(was_training)
    return {n: g.detach().cpu() for n, g in zip(names, grads)}
