"""``attacker tap``: a transparent tap between the edge and the cloud that records the traffic.

The edge points at the tap instead of the cloud (``--listen``); the tap passes every call of every
method to the cloud (``--upstream``) unchanged and records each request's features, the reply,
request id, deployment, peer and time, every ``GetHead`` payload and every ``ListDeployments``
reply into the capture store (``--store``; see :mod:`attacker.captures.store`) off the traffic's
path (:mod:`attacker.tap.recorder`). Recording never blocks or fails a call: drops and failures are
logged and counted in ``STORE/tap-stats.json`` (and in the final line printed on exit).

Two modes:
  passive (default)  a TCP relay that passes the bytes on unchanged (:mod:`attacker.tap.relay`) and
                     hands a copy to a recorder process that decodes HTTP/2 + gRPC
                     (:mod:`attacker.tap.recorder_process`, :mod:`attacker.tap.h2parse`): everything on the
                     wire passes as it is (statuses, metadata, deadlines, flow control, the
                     endpoints' own size limits), at the cost of a socket hop. The tap's own
                     grpc.health.v1 (service "" and "splitlab.attacker.Tap") and reflection are on
                     --admin (default: the listen port + 1).
  proxy              a gRPC proxy (generic handlers, bytes in/out: :mod:`attacker.tap.proxy`) that
                     terminates each call and re-issues it upstream with the same metadata and the
                     remaining deadline, and relays status, details and metadata back; it enforces
                     --max-message-mb on both sides and serves the tap's health (service
                     "splitlab.attacker.Tap"; other health checks are forwarded) and reflection on
                     the listen port itself. Costs about one extra gRPC call per call. Known
                     limit: when the cloud ends a stream with an error while the edge is still
                     sending on it, grpc-aio's client side sometimes reports INTERNAL ("Internal
                     error from Core") instead of the cloud's status (~8% of such streams here).

Several cloud replicas: --upstream may be a name with several addresses or a comma-separated list.
The proxy's upstream channel goes round robin over all of them per call (:mod:`protos.targets`);
the relay spreads connections (each edge connection goes to the next address, a dead one skipped).

TLS (:mod:`protos.tls`): in passive and sniff modes an edge that speaks TLS to the cloud passes
through unchanged and the tap cannot read it: such connections are counted as
``connections_unreadable`` and nothing is recorded. In proxy mode the tap can terminate TLS with
--tls-cert/--tls-key (a certificate the edge trusts: the compromised-proxy model) and speak TLS to
the cloud with --tls-ca (and --tls-client-cert/--tls-client-key for mutual TLS); it records
everything.

Health: the tap's own service ``splitlab.attacker.Tap`` answers SERVING while the tap forwards
and records, and NOT_SERVING while the capture store's writes fail (disk full, store unwritable
or locked, the recorder process gone): traffic still passes then, but nothing is recorded, which
for a tap is being out of service. It is checked every ``health_interval`` seconds (1 s) from the
recorder's ``store_failing`` (:mod:`attacker.tap.recorder`: the last write tried) and recovers at
the first capture written after the store works again, or, with no traffic, when the idle recorder
finds the store writable again (``CaptureStore.check_writable``); each change is logged, and the failed
records are counted in the stats (``record_failures``, ``last_error``). The overall service ""
on --admin stays SERVING while the tap runs (it forwards traffic); in proxy mode "" is the
cloud's, forwarded. A tap started with --no-record has nothing to fail.

SIGTERM / SIGINT stop the tap gracefully: no new connections or calls, in-flight calls get --grace
seconds, the recorder drains its queue and writes the final counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.targets import open_channel
from protos.tls import TlsConfig

from .heap import keep_freed_memory
from .priority import PRIORITIES, run_at_idle_priority
from .relay import Relay
from .sniffer import POLL_INTERVAL, SniffError, Sniffer
from .proxy import HEALTH, SERVICE, TAP_HEALTH_SERVICE, ProxyHandler
from .recorder import Recorder
from .recorder_process import ChunkDecoder, RecorderProcess

log = logging.getLogger("attacker.tap")

DEFAULT_MAX_MESSAGE = 64 << 20
# shared by `attacker tap` and `attacker serve`
UPSTREAM_HELP = ("HOST:PORT of the cloud server, or several comma-separated (or a name with several addresses): "
                 "the proxy spreads calls over them, the relay connections")
PROXY_ONLY = "--mode proxy only: the other modes relay or watch the edge's TLS unchanged"


@dataclass
class TapConfig:
    listen: str
    upstream: str
    store: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    max_queue: int = 65536
    max_queue_bytes: int = 512 << 20
    max_captures: int | None = None
    max_store_bytes: int | None = None
    stats_interval: float = 2.0
    log_interval: float = 60.0
    grace: float = 5.0
    record: bool = True  # False: forward only (the benchmark's control for the cost of recording)
    mode: str = "passive"  # "passive" (TCP relay + HTTP/2 decoding) or "proxy" (gRPC proxy)
    admin: str | None = None  # passive/sniff: health + reflection address (default: listen port + 1)
    interface: str = "lo"  # sniff mode: the interface to read packets on
    poll_interval: float = POLL_INTERVAL  # sniff mode: seconds between reads of the packet socket (0: on arrival)
    priority: str = "normal"  # "idle": the recording threads run only on cores nothing else wants (attacker/tap/priority.py)
    tls: TlsConfig = field(default_factory=TlsConfig)  # proxy mode: TLS towards the edge and/or the cloud
    health_interval: float = 1.0  # seconds between checks of the recording's health (see the module docstring)


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
        self._health_task: asyncio.Task | None = None
        self.recording_problem = ""  # why recording fails now (the tap's health is NOT_SERVING), "" when it works
        self._relay: Relay | Sniffer | None = None
        self._parser: RecorderProcess | None = None
        self._decoder: ChunkDecoder | None = None  # sniff mode: decodes in this process
        self._health = None
        self.admin_port: int | None = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything seen so far is parsed and written (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        if self._parser is not None and not self._parser.flush(timeout):
            return False
        if isinstance(self._relay, Sniffer):  # take what the kernel holds for us first (on the tap's loop)
            done = threading.Event()
            self._relay.loop.call_soon_threadsafe(lambda: (self._relay.drain(), done.set()))
            if not done.wait(timeout):
                return False
        return self.recorder is None or self.recorder.flush(max(0.0, deadline - time.monotonic()))

    async def start(self) -> int:
        cfg = self.config
        if cfg.mode not in ("passive", "proxy", "sniff"):
            raise ValueError(f"tap mode must be 'passive', 'proxy' or 'sniff', got {cfg.mode!r}")
        if cfg.priority not in PRIORITIES:
            raise ValueError(f"tap priority must be {' or '.join(map(repr, PRIORITIES))}, got {cfg.priority!r}")
        if not 0 <= cfg.poll_interval <= 1:
            raise ValueError(f"the sniff poll interval must be 0 to 1000 ms, got {cfg.poll_interval * 1000:g} ms")
        if cfg.mode == "sniff" and "," in cfg.upstream:
            raise ValueError("sniff mode watches one HOST:PORT (0.0.0.0:PORT: that port on any address), "
                             f"got {cfg.upstream!r}")
        if cfg.mode != "proxy" and (cfg.tls.server or cfg.tls.client):
            raise ValueError(f"TLS flags are for --mode proxy: in {cfg.mode} mode the edge's TLS passes through "
                             "the tap unchanged (and cannot be read)")
        if cfg.record and cfg.mode in ("proxy", "sniff"):  # recorded in this process: neither is in a relay's path
            self.recorder = Recorder(cfg.store, cfg.max_queue, cfg.max_queue_bytes, cfg.max_captures,
                                     cfg.max_store_bytes, stats_interval=cfg.stats_interval,
                                     idle_priority=cfg.priority == "idle")
            self.recorder.extra_stats = self._proxy_stats
        options = grpc_options(cfg.max_message_bytes)
        self._server = aio.server(options=options)
        if cfg.mode == "proxy":
            server_credentials = cfg.tls.server_credentials()
            self._channel = open_channel(cfg.upstream, options, cfg.tls, use_aio=True)
            self._handler = ProxyHandler(self._channel, self.recorder, self._health_status)
            reflection.enable_server_reflection([SERVICE, HEALTH, reflection.SERVICE_NAME], self._server)
            self._server.add_generic_rpc_handlers((self._handler,))
            self.port = (self._server.add_secure_port(cfg.listen, server_credentials) if server_credentials
                         else self._server.add_insecure_port(cfg.listen))
            if not self.port:
                raise OSError(f"cannot listen on {cfg.listen}")
        else:
            if cfg.record and cfg.mode == "sniff":
                self._decoder = ChunkDecoder(self.recorder, cfg.max_message_bytes)
            elif cfg.record:
                self._parser = RecorderProcess({
                    "store": cfg.store, "max_queue": cfg.max_queue, "max_queue_bytes": cfg.max_queue_bytes,
                    "max_captures": cfg.max_captures, "max_store_bytes": cfg.max_store_bytes,
                    "stats_interval": cfg.stats_interval, "max_message_bytes": cfg.max_message_bytes,
                    "log_level": logging.getLogger().getEffectiveLevel(),
                    "idle_priority": cfg.priority == "idle"}, cfg.max_queue_bytes)
                self._parser.start(asyncio.get_running_loop())
            if cfg.mode == "sniff":
                if cfg.priority == "idle":  # this loop thread reads and decodes the packets
                    run_at_idle_priority()
                host, _, port = cfg.upstream.rpartition(":")
                self._relay = Sniffer(cfg.interface, int(port), self._decoder, cfg.poll_interval, host)
            else:
                self._relay = Relay(cfg.listen, cfg.upstream, self._parser)
            try:
                self.port = await self._relay.start()
            except SniffError:
                if self.recorder is not None:
                    self.recorder.close(5)
                raise
            except OSError as exc:
                raise OSError(f"cannot listen on {cfg.listen}: {exc}") from exc
            self._health = health.aio.HealthServicer()
            for name in ("", TAP_HEALTH_SERVICE):
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
            reflection.enable_server_reflection([HEALTH, reflection.SERVICE_NAME], self._server)
            admin = cfg.admin or _admin_address(cfg.listen)
            self.admin_port = self._server.add_insecure_port(admin)
            if not self.admin_port:
                raise OSError(f"cannot listen on --admin {admin}")
        await self._server.start()
        self._serving = True
        self._log_task = asyncio.get_running_loop().create_task(self._log_stats())
        if cfg.record:
            if self.recorder is not None:  # proxy and sniff: the writer thread opens the store
                await asyncio.get_running_loop().run_in_executor(None, self.recorder.ready.wait, 10.0)
            await self._check_recording()  # a store that cannot be opened shows at once
            self._health_task = asyncio.get_running_loop().create_task(self._watch_recording())
        where = (f"sniffing {cfg.interface} for {cfg.upstream}" if cfg.mode == "sniff"
                 else f"listening on {cfg.listen} (port {self.port}), forwarding to {cfg.upstream}")
        log.info("tap (%s mode) %s, recording into %s%s", cfg.mode, where,
                 cfg.store if cfg.record else "(nothing: --no-record)",
                 f"; health/reflection on port {self.admin_port}" if self.admin_port else "")
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.grace if grace is None else grace
        self._serving = False
        for task in (self._log_task, self._health_task):
            if task is not None:
                task.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._relay is not None:
            await self._relay.stop(grace)
        if self._server is not None:
            await self._server.stop(grace)
        if self._channel is not None:
            await self._channel.close()
        if self._parser is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._parser.close)
        if self.recorder is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.recorder.close)
        log.info("tap stopped: %s", json.dumps(self.stats(), sort_keys=True))

    def stats(self) -> dict:
        if self.recorder is not None:
            return self.recorder.stats()
        out = self._parser.stats() if self._parser is not None else {}
        out.update(self._proxy_stats())
        return out

    def _proxy_stats(self) -> dict:
        out: dict = {"mode": self.config.mode}
        if self._handler is not None:
            counts = dict(self._handler.counts)
            out["upstream_errors"] = counts.pop("upstream_errors", 0)
            out["forwarded"] = {k.rsplit("/", 1)[-1]: v for k, v in counts.items()}
        if self._relay is not None:
            out["open_connections"] = len(self._relay.clients)
            out["connections"] = self._relay.connections
        if self._decoder is not None:
            out.update(self._decoder.stats())
        if isinstance(self._relay, Sniffer):  # what the sniffer itself skipped or lost
            out["packets_seen"] = self._relay.counts["packets"]
            for name in ("connections_unparsed", "connections_lost"):
                out[name] = out.get(name, 0) + self._relay.counts[name]

        return out

    def _health_status(self) -> int:
        return health_pb2.HealthCheckResponse.SERVING if self._serving and not self.recording_problem else \
            health_pb2.HealthCheckResponse.NOT_SERVING

    async def _check_recording(self) -> None:
        """Read the recorder's state (off the loop: the passive tap asks its recorder process) and,
        when it changed, log it and set the tap's health."""
        stats = await asyncio.get_running_loop().run_in_executor(None, self.stats)
        problem = recording_problem(stats)
        if problem == self.recording_problem:
            return
        if problem:
            log.error("tap health NOT_SERVING: %s (traffic is unaffected; failed records so far: %d)", problem,
                      stats.get("record_failures", 0))
        else:
            log.warning("tap health SERVING again: the capture store takes writes (failed records so far: %d)",
                        stats.get("record_failures", 0))
        self.recording_problem = problem
        if self._health is not None and self._serving:
            await self._health.set(TAP_HEALTH_SERVICE, self._health_status())

    async def _watch_recording(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            try:
                await self._check_recording()
            except Exception:  # the watch must outlive any one failed look
                log.exception("checking the recorder's health failed")

    async def _log_stats(self) -> None:
        last = None
        while True:
            await asyncio.sleep(self.config.log_interval)
            line = json.dumps(self.stats(), sort_keys=True)
            if line != last:
                log.info("tap stats: %s", line)
                last = line


def recording_problem(stats: dict) -> str:
    """Why the tap is not recording, from its stats ("" when it is)."""
    if stats.get("recorder_dead"):
        return stats["recorder_dead"]
    if stats.get("store_failing"):
        return f"capture store writes fail: {stats.get('last_error') or 'unknown error'}"
    return ""


def _admin_address(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + 1 if int(port) else 0}"


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

    def flush(self, timeout: float = 10.0) -> bool:
        return self.tap.flush(timeout)

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

    keep_freed_memory()  # see attacker/tap/heap.py: fresh pages for every message slow the victims too

    async def main() -> None:
        tap = Tap(config)
        await tap.start()
        host = config.listen.rpartition(":")[0]
        admin = f", health/reflection on {host}:{tap.admin_port}" if tap.admin_port else ""
        if config.mode == "sniff":
            what = config.upstream if tap._relay.host else f"port {tap.port} of any address ({config.upstream})"
            print(f"tap sniffing {config.interface} for {what}, store {config.store} (sniff mode{admin})", flush=True)
        else:
            print(f"tap listening on {host}:{tap.port} -> {config.upstream}, store {config.store} "
                  f"({config.mode} mode{admin})", flush=True)
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
