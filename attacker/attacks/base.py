"""What every attack shares, whatever its family: declared, validated parameters and ``fit(knowledge)``.

An attack is built from its parameters (a dataclass, checked when it is constructed) and learns
what its threat model allows with ``fit(knowledge)``, which refuses the knowledge object of any
other threat model. Each family adds its own calling shape on top (inversion
``reconstruct(features)``, membership ``score(samples)``; see ``inversion/base.py``), so that
nothing here knows what an attack computes, only how it is configured and what it may know::

    attack = WhiteBoxAttack(WhiteBoxParams(iterations=2000))
    attack.fit(WhiteBoxKnowledge.from_onnx(head_bytes))
    images = attack.reconstruct(features)

Bad parameters raise :class:`AttackParameterError` (both a ``SplitlabError`` and a ``ValueError``)
whose message names the parameter.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from models.errors import SplitlabError

if TYPE_CHECKING:
    import torch


class AttackParameterError(SplitlabError, ValueError):
    """A parameter of an attack (or of its knowledge) is invalid; the message names it."""


@dataclasses.dataclass
class AttackParams:
    """Base class of attack parameters: validated on construction, buildable from a dict."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by each attack
        pass

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "AttackParams":
        """Build from a dict (e.g. a YAML config), refusing names the attack does not have."""
        values = dict(values or {})
        names = cls.field_names()
        unknown = sorted(set(values) - names)
        if unknown:
            raise AttackParameterError(
                f"unknown parameter(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(names))}")
        return cls(**values)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def replace(self, **changes) -> "AttackParams":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- validation helpers (each names the parameter) --------------------------------------------

def check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise AttackParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise AttackParameterError(f"{name} must be a finite number {bound}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise AttackParameterError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_unit_interval(name: str, value) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    if not ok:
        raise AttackParameterError(f"{name} must be a number in [0, 1], got {value!r}")


# --- tensors ----------------------------------------------------------------------------------

def as_float_tensor(name: str, value, shape_tail: tuple[int, ...] | None = None) -> torch.Tensor:
    """A float32 CPU tensor from an ndarray or tensor, checked for shape (N, *shape_tail) and NaN/Inf."""
    import torch  # here, not above: the registry reads this module, and naming attacks needs no torch

    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        raise AttackParameterError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")
    tensor = tensor.to(device="cpu", dtype=torch.float32)
    if shape_tail is not None and tuple(tensor.shape[1:]) != tuple(shape_tail):
        raise AttackParameterError(
            f"{name} must have shape (N, {', '.join(map(str, shape_tail))}), got {tuple(tensor.shape)}")
    if tensor.ndim < 1 or tensor.shape[0] == 0:
        raise AttackParameterError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if not torch.isfinite(tensor).all():
        raise AttackParameterError(f"{name} contains NaN or Inf")
    return tensor


class Attack:
    """Base class of every attack: ``Attack(params).fit(knowledge)``, then the family's own call.

    ``family`` and ``name`` make the registry key ``family/name``; ``Params`` is the attack's
    parameter dataclass; ``Knowledge`` the one knowledge class its threat model allows.
    """

    family: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Params: ClassVar[type[AttackParams]] = AttackParams
    Knowledge: ClassVar[type] = object

    def __init__(self, params: AttackParams | dict | None = None, **overrides):
        if params is None or isinstance(params, dict):
            params = self.Params.from_dict({**(params or {}), **overrides})
        elif overrides and isinstance(params, self.Params):
            params = self.Params.from_dict({**params.as_dict(), **overrides})
        if not isinstance(params, self.Params):
            raise AttackParameterError(f"{type(self).__name__} takes {self.Params.__name__}, "
                                       f"got {type(params).__name__}")
        params.validate()
        self.params = params
        self.knowledge = None
        self.fit_seconds: float | None = None

    @classmethod
    def key(cls) -> str:
        """The registry key, ``family/name``."""
        return f"{cls.family}/{cls.name}"

    def fit(self, knowledge) -> "Attack":
        if not isinstance(knowledge, self.Knowledge):
            raise AttackParameterError(f"the {self.key()} attack needs a {self.Knowledge.__name__}, "
                                       f"got {type(knowledge).__name__}")
        self.knowledge = knowledge
        return self

    def fit_stats(self) -> dict[str, Any]:
        """What fitting measured that is worth reporting (queries made, shadow accuracy, ...)."""
        return {}

    def _require_fit(self, call: str) -> None:
        if self.knowledge is None:
            raise SplitlabError(f"call fit(knowledge) before {call}() on the {self.key()} attack")
