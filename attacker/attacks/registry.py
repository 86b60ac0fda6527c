"""The one list of attack names: ``family/name`` -> the class that implements it.

Every other place that needs attack names (the CLI's ``--method`` choices, the lab's spec, the
suites' configs) asks :func:`names` or :func:`keys`, so an attack added here is known everywhere
and a name that is not here is refused everywhere with the same message. Classes are named as
``module:Class`` and imported on first use: the names cost nothing to read (a pydantic ``Literal``
is built from them at import time) and a family's heavy imports load only when it is used.

A family adds its attacks to :data:`ATTACKS`; each class declares the same ``family`` and ``name``
as its key (checked on load). Short names (``"whitebox"``) resolve in :data:`SHORT_NAME_FAMILY`
only: the inversion attacks had them before there were families, and the CLI and the lab still
take them; every other family is always named in full (``"membership/lira"``).
"""

from __future__ import annotations

import importlib

from .base import Attack, AttackParameterError

ATTACKS: dict[str, str] = {
    "inversion/whitebox": "attacker.attacks.inversion.whitebox:WhiteBoxAttack",
    "inversion/blackbox": "attacker.attacks.inversion.blackbox:BlackBoxAttack",
    "inversion/queryfree": "attacker.attacks.inversion.queryfree:QueryFreeAttack",
    "membership/threshold": "attacker.attacks.membership.threshold:ThresholdAttack",
    "membership/shokri": "attacker.attacks.membership.shokri:ShokriAttack",
    "membership/lira": "attacker.attacks.membership.lira:LiRAAttack",
    "membership/nasr": "attacker.attacks.membership.nasr:NasrAttack",
    "attribute/features": "attacker.attacks.attribute.attack:FeatureAttributeAttack",
    "attribute/outputs": "attacker.attacks.attribute.attack:OutputAttributeAttack",
    # Fredrikson et al.'s classifier inversion reconstructs a class, not a request's features: its own
    # family, so that the split-feature inverters (the CLI's --method, the lab) do not list it.
    "classifier-inversion/mi-face": "attacker.attacks.inversion.classifier:ClassifierInversionAttack",
    "gradient/dlg": "attacker.attacks.gradient.dlg:DLGAttack",
    "gradient/idlg": "attacker.attacks.gradient.dlg:IDLGAttack",
    "gradient/inverting_gradients": "attacker.attacks.gradient.inverting:InvertingGradientsAttack",
}
SHORT_NAME_FAMILY = "inversion"


def families() -> tuple[str, ...]:
    """The families that have attacks, in registry order."""
    return tuple(dict.fromkeys(key.split("/", 1)[0] for key in ATTACKS))


def keys(family: str | None = None) -> tuple[str, ...]:
    """Every ``family/name`` key, or those of one family."""
    if family is not None:
        _check_family(family)
    return tuple(k for k in ATTACKS if family is None or k.split("/", 1)[0] == family)


def names(family: str) -> tuple[str, ...]:
    """The attacks of one family by their short names, e.g. ``("whitebox", "blackbox", "queryfree")``."""
    return tuple(k.split("/", 1)[1] for k in keys(family))


def resolve(name: str) -> str:
    """The registry key of ``name`` (``"whitebox"`` -> ``"inversion/whitebox"``); unknown names are refused."""
    if not isinstance(name, str):
        raise AttackParameterError(f"an attack name must be a string, got {type(name).__name__}")
    key = name if "/" in name else f"{SHORT_NAME_FAMILY}/{name}"
    if key not in ATTACKS:
        raise AttackParameterError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)} (the {SHORT_NAME_FAMILY} "
                                   f"attacks also by their short names: {', '.join(names(SHORT_NAME_FAMILY))})")
    return key


def attack_class(name: str) -> type[Attack]:
    """The class registered under ``name`` (a key or an inversion short name)."""
    key = resolve(name)
    module, _, attr = ATTACKS[key].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Attack)) or cls.key() != key:
        found = cls.key() if isinstance(cls, type) and issubclass(cls, Attack) else repr(cls)
        raise TypeError(f"the registry maps {key!r} to {ATTACKS[key]}, which is {found}")
    return cls


def create(name: str, params=None, **overrides) -> Attack:
    """An attack by name, with parameters from a dataclass, a dict and/or keywords (validated here)."""
    return attack_class(name)(params, **overrides)


def _check_family(family: str) -> None:
    if family not in families():
        raise AttackParameterError(f"unknown attack family {family!r}; known: {', '.join(families())}")
