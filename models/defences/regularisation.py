"""L2 regularisation as a training-time defence: on every layer, or on the output layer only.

Giammarresi (``../shared/papers/004``) adds L2 "only to the output layer" and finds it raises that
layer's resistance to model inversion most (and, with dropout, the best defence overall), so the
scope is an option: ``"all"`` decays every parameter (the project's ``--weight-decay`` as before),
``"output"`` decays only the parameters (weight and bias) of the network's last ``nn.Linear``.

The decay is Adam's ``weight_decay``, i.e. *coupled* L2: ``w`` is added to each gradient before
Adam's moments, which is exactly the gradient of the loss penalty ``(w/2)·||θ||²``. 004's Keras
``l2(λ)`` penalty ``λ·||θ||²`` is therefore ``weight_decay = 2λ`` here. We keep the optimizer's
decay rather than adding the penalty to the loss for one reason, DP-SGD: a penalty in the loss
would enter each example's gradient and be clipped with it (shrinking the room the clip leaves for
the data's gradient), while the optimizer's decay is added to the noised gradient; it depends on
the weights only, so neither way costs privacy. Without DP the two are the same update.
"""

from __future__ import annotations

from torch import nn

from ..errors import SplitlabError

SCOPES = ("all", "output")


def validate_scope(scope: str, weight_decay: float) -> None:
    if scope not in SCOPES:
        raise SplitlabError(f"--l2-scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if scope != "all" and not weight_decay:
        raise SplitlabError(f"--l2-scope {scope} needs a --weight-decay above 0 (there is no decay to place)")


def output_layer(model: nn.Module) -> nn.Linear:
    """The network's output layer: its last ``nn.Linear``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SplitlabError(f"{type(model).__name__} has no Linear layer to take as its output layer")
    return linears[-1]


def decayed_parameters(model: nn.Module, scope: str) -> list[nn.Parameter] | None:
    """The parameters weight decay applies to under ``scope`` (None: all of them), for
    :func:`models.fit.fit`'s ``decay_only``."""
    validate_scope(scope, 1.0)
    if scope == "all":
        return None
    return list(output_layer(model).parameters())
