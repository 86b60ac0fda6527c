"""The error a request handler raises to answer with a gRPC status and a message."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request the server refuses; ``code`` is the gRPC status, the message says why."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
