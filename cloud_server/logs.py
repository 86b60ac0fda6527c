"""Structured logs for the cloud server: one JSON object per line on stderr, with request ids.

``log(logger, "infer", request_id=..., ms=...)`` writes
``{"ts": "...", "level": "info", "logger": "cloud_server", "event": "infer", "request_id": ..., ...}``.
Every request is logged at ``info`` (refusals at ``warning``); the lifecycle events (``serving``
with the bound address, ``shutting down``, ``stopped``) come from ``cloud_server.lifecycle`` and
are logged at any level.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from .errors import clip


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info", stream=None) -> None:
    """Route the ``cloud_server`` logger to ``stream`` (stderr) as JSON lines at ``level``."""
    logger = logging.getLogger("cloud_server")
    logger.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    # start-up and shutdown events (with the bound address) are logged even at --log-level warning
    logging.getLogger("cloud_server.lifecycle").setLevel(min(logging.INFO, logger.level))


def log(logger: logging.Logger, level: int, event: str, **fields) -> None:
    """Text fields are clipped: a client's megabyte-long deployment id must not become a log line."""
    if logger.isEnabledFor(level):
        fields = {k: clip(v) if isinstance(v, str) else v for k, v in fields.items()}
        logger.log(level, event, extra={"fields": fields})
