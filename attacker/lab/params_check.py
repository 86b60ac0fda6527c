"""An attack's ``params`` in a lab spec, checked up front: the service's own settings refused, the
budget limits, then the attack's declared parameters (names, types, ranges), each error naming the
parameter so that the 422 says ``params.<name>: ...``.

Used by the attribute and classifier-inversion kinds (one attack each, ``params`` at the top level).
"""

from __future__ import annotations

from typing import Any

from ..attacks import AttackParameterError, attack_class

# Set by the service, never by a spec: the run's seed is the spec's seed, the device the service's.
SERVICE_PARAMS = {"device": "device is the service's choice (attacker serve --device, env SPLITLAB_DEVICE), "
                            "not an experiment's",
                  "seed": "seed is the experiment's seed (the spec's top-level seed)",
                  "progress": "progress is the service's (the experiment reports its own progress)"}


def params_errors(key: str, params: dict[str, Any], limits: dict[str, tuple[int, str]],
                  loc: tuple = ("params",)) -> list[tuple[tuple, str]]:
    """Errors of ``params`` for the registry's attack ``key``; ``limits`` maps a parameter to
    (its limit, the flag that sets it)."""
    errors = [(loc + (name,), message) for name, message in SERVICE_PARAMS.items() if name in params]
    for name, (limit, flag) in limits.items():
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            errors.append((loc + (name,), f"{value} is over the limit of {limit} ({flag})"))
    if errors:
        return errors
    try:
        attack_class(key).Params.from_dict(params)
    except (AttackParameterError, TypeError, ValueError) as exc:
        message = str(exc)
        name = next((k for k in params if message.startswith(k) or f" {k}" in message), None)
        errors.append((loc + ((name,) if name else ()), message))
    return errors


def run_params(key: str, params: dict[str, Any], seed: int, device: str | None) -> dict[str, Any]:
    """The parameters handed to the attack: the spec's, with the run's seed and the service's device."""
    fields = attack_class(key).Params.field_names()
    out = dict(params)
    if "seed" in fields:
        out["seed"] = seed
    if device is not None and "device" in fields:
        out["device"] = device
    return out
