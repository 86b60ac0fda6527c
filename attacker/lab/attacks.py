"""The lab's bridge to the attack registry (:mod:`attacker.attacks`): parameters and settings.

An experiment names an attack and its knowledge setting (``aux``, ``shadow``); this module turns
that into the attack's own declared parameters, validates them up front (so a bad one is a 422 at
submission, not a failure later) and applies the service's budget: an attack parameter the user
did not set whose default is over a configured limit is lowered to the limit.
"""

from __future__ import annotations

from typing import Any

from .spec import EPOCH_PARAMS, ITERATION_PARAMS, AttackSpec, Limits

# Nested parameter blocks (queryfree's white-box stage) that carry their own budgets.
NESTED = ("whitebox",)


def attack_params(attack: AttackSpec, split: str | None = None, limits: Limits | None = None) -> dict[str, Any]:
    """The parameters handed to the attack: the user's, the setting, no progress bars, budgets."""
    params = {k: (dict(v) if isinstance(v, dict) else v) for k, v in attack.params.items()}
    params["progress"] = False
    if attack.name == "queryfree":
        params["shadow"] = attack.shadow
        params["whitebox"] = {**params.get("whitebox", {}), "progress": False}
    if limits is not None:
        if attack.name == "whitebox":
            params = _clamp_whitebox(params, split, limits, lambda p: p.resolved(split))
        elif attack.name == "queryfree":
            params["whitebox"] = _clamp_whitebox(params["whitebox"], split, limits, _queryfree_resolver(split))
        cls = _params_class(attack.name)
        for key in EPOCH_PARAMS:
            default = getattr(cls, key, None) if key in cls.__dataclass_fields__ else None
            if key not in params and isinstance(default, int) and default > limits.max_epochs:
                params[key] = limits.max_epochs
    return params


def _clamp_whitebox(params: dict, split: str | None, limits: Limits, resolve) -> dict:
    """Lower the default iteration count to the limit (a value the user gave was checked already)."""
    from attacker.attacks import WhiteBoxParams

    if params.get("iterations") is None:
        resolved = resolve(WhiteBoxParams.from_dict(params))
        if resolved.iterations > limits.max_iterations:
            params = {**params, "iterations": limits.max_iterations}
    return params


def _queryfree_resolver(split: str | None):
    """How the query-free attack fills in its inversion defaults (its own, then white-box's)."""
    try:
        from attacker.attacks.inversion.queryfree import queryfree_whitebox
    except ImportError:  # an attack module without query-free specific defaults
        return lambda p: p.resolved(split)
    return lambda p: queryfree_whitebox(p, split)


def _params_class(name: str):
    from attacker.attacks import attack_class

    return attack_class(name).Params


def attack_params_error(attack: AttackSpec) -> str | None:
    """None if the attack accepts the spec's parameters, else the attack's message (naming one)."""
    from attacker.attacks import AttackParameterError

    if "progress" in attack.params:
        return "progress is set by the lab (no progress bars in a service)"
    if "device" in attack.params:
        return "device is the service's choice (attacker serve --device, env SPLITLAB_DEVICE), not an experiment's"
    if attack.name == "queryfree":
        if "shadow" in attack.params:
            return "give the shadow structure as the attack's 'shadow' setting, not in params"
        if "whitebox" in attack.params and not isinstance(attack.params["whitebox"], dict):
            return "whitebox must be an object of white-box parameters"
    try:
        _params_class(attack.name).from_dict(attack_params(attack))
    except (AttackParameterError, TypeError, ValueError) as exc:
        return str(exc)
    return None


def shadow_error(attack: AttackSpec, arch: str, split: str) -> str | None:
    """A 'different' query-free shadow exists only for some (architecture, split point) pairs."""
    if attack.name != "queryfree" or attack.shadow != "different":
        return None
    from attacker.attacks.inversion.queryfree import DIFFERENT_SHADOWS

    if (arch, split) not in DIFFERENT_SHADOWS:
        known = ", ".join(f"{a} {s}" for a, s in DIFFERENT_SHADOWS)
        return f"no 'different' shadow structure for {arch} {split}; defined for: {known}"
    return None


def budget_errors(params: dict, limits: Limits, prefix: tuple = ()) -> list[tuple[tuple, str]]:
    """Iterations and epochs over the configured limits, at any nesting level."""
    errors: list[tuple[tuple, str]] = []
    for key, value in params.items():
        if key in NESTED and isinstance(value, dict):
            errors += budget_errors(value, limits, prefix + (key,))
            continue
        if key not in ITERATION_PARAMS and key not in EPOCH_PARAMS:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append((prefix + (key,), f"must be an integer, got {value!r}"))
            continue
        limit, flag = ((limits.max_iterations, "--max-iterations / SPLITLAB_LAB_MAX_ITERATIONS")
                       if key in ITERATION_PARAMS else (limits.max_epochs, "--max-epochs / SPLITLAB_LAB_MAX_EPOCHS"))
        if value > limit:
            errors.append((prefix + (key,), f"{value} is over the limit of {limit} ({flag})"))
    return errors
