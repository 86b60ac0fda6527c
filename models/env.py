"""Flag defaults read from ``SPLITLAB_*`` environment variables, with a clear error when malformed."""

from __future__ import annotations

import os

from .errors import SplitlabError


def env_default(name: str, default, kind=str, choices=None):
    """``kind(os.environ[name])``, or ``default`` when the variable is unset or empty. With
    ``choices`` the value must be one of them (argparse checks only the values given as flags, not
    defaults, so a flag whose default comes from here passes its choices on)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        value = kind(value)
    except ValueError:
        raise SplitlabError(f"environment variable {name} must be {kind.__name__}, got {value!r}") from None
    if choices is not None and value not in choices:
        raise SplitlabError(f"environment variable {name} must be one of {', '.join(map(str, choices))}, "
                            f"got {value!r}")
    return value
