"""The error a request handler raises to answer with a gRPC status and a message.

Messages quote what the client sent (a deployment id, a shape), and a client can send megabytes of
it. A status message travels in a trailer, which gRPC clients refuse beyond 16 KiB (the client
would see RESOURCE_EXHAUSTED "Stream removed" instead of the real status), so messages are clipped
to :data:`MAX_MESSAGE` characters here, and log fields with them (:func:`clip`).
"""

from __future__ import annotations

import grpc

MAX_MESSAGE = 1024


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text``, or its start and end around a note of how much was left out."""
    if len(text) <= limit:
        return text
    keep = limit - 40
    return f"{text[:keep - 16]} ...[{len(text) - keep} characters left out]... {text[-16:]}"


class RequestError(Exception):
    """A request the server refuses; ``code`` is the gRPC status, the message says why."""

    def __init__(self, code: grpc.StatusCode, message: str):
        message = clip(message)
        super().__init__(message)
        self.code = code
        self.message = message
