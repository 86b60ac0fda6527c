"""Flag defaults read from ``SPLITLAB_*`` environment variables, with a clear error when malformed."""

from __future__ import annotations

import os

from .errors import SplitlabError


def env_default(name: str, default, kind=str):
    """``kind(os.environ[name])``, or ``default`` when the variable is unset or empty."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError:
        raise SplitlabError(f"environment variable {name} must be {kind.__name__}, got {value!r}") from None
