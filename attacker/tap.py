"""``attacker tap``: a transparent gRPC proxy between the edge and the cloud that records traffic.

The edge points at the tap instead of the cloud (``--listen``); the tap forwards every call of
every method to the cloud (``--upstream``) unchanged (see :mod:`attacker.proxy`) and records each
request's features, the reply, request id, deployment, peer and time, every ``GetHead`` payload and
every ``ListDeployments`` reply into the capture store (``--store``; see
:mod:`attacker.capture_store`) on a background writer thread (:mod:`attacker.recorder`). Recording
never blocks or fails a call: drops and failures are counted in ``DIR/tap-stats.json`` and logged.

The tap serves its own ``grpc.health.v1`` status under the service name ``splitlab.attacker.Tap``
(other health checks are forwarded to the cloud) and server reflection. SIGTERM / SIGINT stop it
gracefully: no new calls, in-flight calls get ``--grace`` seconds, the recorder drains its queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from dataclasses import dataclass

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from .proxy import HEALTH, SERVICE, TAP_HEALTH_SERVICE, ProxyHandler
from .recorder import Recorder

log = logging.getLogger("attacker.tap")

DEFAULT_MAX_MESSAGE = 64 << 20


@dataclass
class TapConfig:
    listen: str
    upstream: str
    store: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    max_queue: int = 4096
    max_queue_bytes: int = 512 << 20
    max_captures: int | None = None
    max_store_bytes: int | None = None
    stats_interval: float = 2.0
    log_interval: float = 60.0
    grace: float = 5.0
    record: bool = True  # False: a plain proxy (the benchmark's control for the cost of recording)


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


class Tap:
    """The tap on the running asyncio loop: ``await start()`` (returns the port), ``await stop()``."""

    def __init__(self, config: TapConfig):
        self.config = config
        self.recorder: Recorder | None = None
        self.port: int | None = None
        self._serving = False
        self._server: aio.Server | None = None
        self._channel: aio.Channel | None = None
        self._handler: ProxyHandler | None = None
        self._log_task: asyncio.Task | None = None

    async def start(self) -> int:
        cfg = self.config
        if cfg.record:
            self.recorder = Recorder(cfg.store, cfg.max_queue, cfg.max_queue_bytes, cfg.max_captures,
                                     cfg.max_store_bytes, stats_interval=cfg.stats_interval)
        options = grpc_options(cfg.max_message_bytes)
        self._channel = aio.insecure_channel(cfg.upstream, options=options)
        self._handler = ProxyHandler(self._channel, self.recorder, self._health_status)
        if self.recorder is not None:
            self.recorder.extra_stats = self._proxy_stats
        self._server = aio.server(options=options)
        reflection.enable_server_reflection([SERVICE, HEALTH, reflection.SERVICE_NAME], self._server)
        self._server.add_generic_rpc_handlers((self._handler,))
        self.port = self._server.add_insecure_port(cfg.listen)
        if not self.port:
            raise OSError(f"cannot listen on {cfg.listen}")
        await self._server.start()
        self._serving = True
        self._log_task = asyncio.get_running_loop().create_task(self._log_stats())
        log.info("tap listening on %s (port %d), forwarding to %s, recording into %s", cfg.listen, self.port,
                 cfg.upstream, cfg.store if cfg.record else "(nothing: --no-record)")
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        self._serving = False
        if self._log_task is not None:
            self._log_task.cancel()
        if self._server is not None:
            await self._server.stop(self.config.grace if grace is None else grace)
        if self._channel is not None:
            await self._channel.close()
        if self.recorder is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.recorder.close)
            log.info("tap stopped: %s", json.dumps(self.stats(), sort_keys=True))

    def stats(self) -> dict:
        if self.recorder is not None:
            return self.recorder.stats()
        return self._proxy_stats()

    def _proxy_stats(self) -> dict:
        counts = dict(self._handler.counts) if self._handler else {}
        errors = counts.pop("upstream_errors", 0)
        return {"forwarded": {k.rsplit("/", 1)[-1]: v for k, v in counts.items()}, "upstream_errors": errors}

    def _health_status(self) -> int:
        return health_pb2.HealthCheckResponse.SERVING if self._serving else \
            health_pb2.HealthCheckResponse.NOT_SERVING

    async def _log_stats(self) -> None:
        last = None
        while True:
            await asyncio.sleep(self.config.log_interval)
            line = json.dumps(self.stats(), sort_keys=True)
            if line != last:
                log.info("tap stats: %s", line)
                last = line


class TapThread:
    """Run a :class:`Tap` on its own event loop in a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, config: TapConfig):
        self.tap = Tap(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tap-loop", daemon=True)

    def start(self) -> int:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.tap.start(), self._loop).result(30)

    def stop(self, grace: float = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self.tap.stop(grace), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def stats(self) -> dict:
        return self.tap.stats()

    @property
    def recorder(self) -> Recorder | None:
        return self.tap.recorder

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def serve(config: TapConfig) -> int:
    """Run the tap until SIGTERM or SIGINT; returns the process exit code."""

    async def main() -> None:
        tap = Tap(config)
        await tap.start()
        host = config.listen.rpartition(":")[0]
        print(f"tap listening on {host}:{tap.port} -> {config.upstream}, store {config.store}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received: draining (grace %.1f s)", config.grace)
        await tap.stop()
        print("tap stopped: " + json.dumps(tap.stats(), sort_keys=True), flush=True)

    asyncio.run(main())
    return 0


__all__ = ["TAP_HEALTH_SERVICE", "Tap", "TapConfig", "TapThread", "grpc_options", "serve"]
