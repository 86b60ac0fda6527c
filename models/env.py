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


def program_env(program: str):
    """:func:`env_default` for a command's argparse defaults: a malformed value ends the program with
    its message, prefixed by the command's name (``cloud-server: environment variable ...``)."""

    def env(name: str, default, kind=str, choices=None):
        try:
            return env_default(name, default, kind, choices)
        except SplitlabError as exc:
            raise SystemExit(f"{program}: {exc}") from None

    return env


DEVICES = ("cpu", "cuda")


def torch_cuda_status() -> tuple[bool, str]:
    """(torch can use CUDA, a sentence saying so); never raises, and imports torch only when called."""
    try:
        import torch

        available = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a torch without CUDA support at all
        available = False
    return available, f"torch.cuda.is_available() is {available}"


def cuda_fallback_message(program: str, runtime: str, detail: str) -> str:
    """The one wording of "CUDA was asked for, the CPU is used instead" (edge, training, attacks)."""
    return (f"{program}: CUDA was requested (--device cuda) but is not available to {runtime} on this "
            f"machine ({detail}); falling back to the CPU.")


def resolve_device(requested: str | None = None, program: str = "splitlab") -> str:
    """``"cpu"`` or ``"cuda"`` for torch: ``requested``, else ``$SPLITLAB_DEVICE``, else the CPU.

    CUDA asked for on a machine without it prints :func:`cuda_fallback_message` to stderr and
    answers ``"cpu"``: a run configured for a GPU box still completes on a laptop, and says why it
    is slower. Anything but cpu/cuda is an error naming where it came from.
    """
    import sys

    if requested is None or requested == "":
        device = env_default("SPLITLAB_DEVICE", "cpu", choices=DEVICES)
    elif requested in DEVICES:
        device = requested
    else:
        raise SplitlabError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if device == "cuda":
        available, detail = torch_cuda_status()
        if not available:
            print(cuda_fallback_message(program, "torch", detail), file=sys.stderr)
            return "cpu"
    return device
