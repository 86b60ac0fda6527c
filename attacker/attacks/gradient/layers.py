"""Which parameters' gradients the attacker observes: layer groups mapped onto any zoo architecture.

The paper's partial-gradient table (``000_11769f52c2347cab.txt``, Table 6: ViT-B cut into stem,
attention, MLP, norm and head) asks how much of the image each part of the update gives away. A
group is defined by what a layer *is*, not by a list per architecture, so the same selector
works on the CNNs of the zoo and on the transformer-like models another study adds:

* ``all`` - every trainable parameter (what a FedSGD client sends).
* ``stem`` - the first top-level layer with parameters (``conv1``, ``conv11``, ResNet's ``stem``),
  or the top-level layer named ``stem`` / ``patch_embed`` / ``embed`` where there is one, plus any
  parameter held by the model itself (a ViT's class token and position embedding).
* ``head`` - the last top-level layer with parameters (the classifier: ``fc3``, ``fc2``, ``fc``).
* ``norm`` - the parameters of every normalisation layer (BatchNorm, LayerNorm, GroupNorm, ...).
* ``attention`` - parameters inside ``nn.MultiheadAttention`` or a module named ``attn`` /
  ``attention`` (anywhere in its path).
* ``mlp`` - parameters inside a module named ``mlp`` / ``ffn`` / ``feed_forward`` (a transformer
  block's feed-forward part; a CNN's fully connected classifier layers are not one).

Anything else in the selector is a layer's path (``"fc3"``, ``"layer4.1"``) or a parameter-name
pattern (``fnmatch``: ``"conv*.weight"``). A group that has no parameters in the architecture (``attention`` in
``lenet5``) is an error naming the groups the architecture has, never an empty observation.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from ..base import AttackParameterError

GROUPS = ("all", "stem", "attention", "mlp", "norm", "head")
STEM_NAMES = ("stem", "patch_embed", "embed")
ATTENTION_NAMES = ("attn", "attention")
MLP_NAMES = ("mlp", "ffn", "feed_forward")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _trainable(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _under(prefixes, names: list[str]) -> list[str]:
    return [n for n in names if any(n.startswith(f"{p}.") for p in prefixes)]


def _module_params(model: nn.Module, names: list[str], keep) -> list[str]:
    """The parameters (of ``names``) owned by a module for which ``keep(path, module)`` holds, or below one."""
    prefixes = [path for path, module in model.named_modules() if path and keep(path, module)]
    return _under(prefixes, names)


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """Every group's parameter names in ``model`` (empty lists for groups it does not have)."""
    names = _trainable(model)
    top = [child for child, module in model.named_children() if any(p.requires_grad for p in module.parameters())]
    stem_child = next((c for c in top if c in STEM_NAMES), top[0] if top else None)
    own = [n for n in names if "." not in n]  # held by the model itself: class token, position embedding
    parts = lambda path: path.split(".")  # noqa: E731
    return {
        "all": names,
        "stem": own + _under([stem_child] if stem_child else [], names),
        "attention": _module_params(model, names, lambda path, m: isinstance(m, nn.MultiheadAttention) or any(
            p in ATTENTION_NAMES for p in parts(path))),
        "mlp": _module_params(model, names, lambda path, m: any(p in MLP_NAMES for p in parts(path))),
        "norm": _module_params(model, names, lambda path, m: isinstance(m, NORM_TYPES)),
        "head": _under(top[-1:], names),
    }


def selector_entries(observe) -> tuple[str, ...]:
    """``observe`` ("all", "stem,head", ["norm", "conv1.*"]) as a tuple of non-empty entries."""
    if isinstance(observe, str):
        entries = [e.strip() for e in observe.split(",")]
    elif isinstance(observe, (list, tuple)) and all(isinstance(e, str) for e in observe):
        entries = [e.strip() for e in observe]
    else:
        raise AttackParameterError(f"observe must be a group name, a parameter-name pattern or a list of them, "
                                   f"got {observe!r}")
    if not entries or not all(entries):
        raise AttackParameterError(f"observe must name at least one group or pattern, got {observe!r}")
    return tuple(entries)


def observed_parameters(model: nn.Module, observe="all", arch: str = "the model") -> tuple[str, ...]:
    """The parameter names ``observe`` selects in ``model``, in the model's order; a group the
    architecture does not have, or a pattern that matches nothing, is refused by name."""
    groups = parameter_groups(model)
    names = groups["all"]
    chosen: set[str] = set()
    for entry in selector_entries(observe):
        if entry in groups:
            found = groups[entry]
            if not found:
                has = ", ".join(g for g in GROUPS if groups[g])
                raise AttackParameterError(f"observe: {arch} has no {entry!r} layers; its groups are {has} "
                                           "(or give parameter-name patterns such as 'conv1.*')")
        else:  # a layer's path ("fc3", "layer4.1") or a parameter-name pattern ("conv*.weight")
            found = _under([entry], names) or [n for n in names if fnmatch.fnmatchcase(n, entry)]
            if not found:
                raise AttackParameterError(f"observe: {entry!r} is no group ({', '.join(GROUPS)}), no layer and "
                                           f"no pattern matching a parameter of {arch}; its parameters: "
                                           f"{', '.join(names)}")
        chosen.update(found)
    return tuple(n for n in names if n in chosen)
