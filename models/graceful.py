"""Run a uvicorn app so that SIGTERM / SIGINT shut it down gracefully and the process exits 0.

uvicorn drains in-flight requests on a signal and then re-raises the signal with the handlers
that were installed before it started; with the default handlers the process dies of the signal
(exit status -15 / 130) even though it shut down cleanly. Installing no-op handlers first makes
the re-raise harmless, so services report a clean stop. (Shared by the edge's REST endpoint and
the attacker's lab API; it lives here because both may import ``models`` but not each other.)
"""

from __future__ import annotations

import signal


def run_uvicorn(app, host: str, port: int, **config) -> None:
    import uvicorn

    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(app, host=host, port=port, **config)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
