"""ONNX Runtime sessions for heads, tuned for small CPUs shared with other processes."""

from __future__ import annotations

import os


def default_threads() -> int:
    """Threads for one torch / ONNX Runtime user: ``$SPLITLAB_THREADS``, else 1.

    Several splitlab processes usually share one machine (edge, cloud and attacker, or tests);
    two processes spinning two threads each on two cores slow each other down 10-20x, so the
    default is one thread per process. Raise it when a process has the machine to itself.
    """
    value = os.environ.get("SPLITLAB_THREADS", "1")
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        from .errors import SplitlabError

        raise SplitlabError(f"SPLITLAB_THREADS must be a positive integer, got {value!r}")
    return threads


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def head_session(model: bytes | str, threads: int = 1, providers: list[str] | None = None):
    """An ``InferenceSession`` for a head with spinning turned off (it steals cores from others)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])
