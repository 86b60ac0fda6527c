"""The passive tap: a TCP relay between the edge and the cloud that decodes a copy of the traffic.

Each accepted connection gets its own connection to the upstream, and bytes are relayed both ways
unchanged by asyncio protocols (no parsing, no copies, TCP_NODELAY, back-pressure by pausing the
other side), so everything gRPC puts on the wire passes through as it is: messages, status codes,
initial and trailing metadata, deadlines (``grpc-timeout``), keepalives, flow control, and the
size limits the two endpoints enforce. A reference to each chunk goes to a bounded queue; one
parser thread decodes HTTP/2 and gRPC from it (:mod:`attacker.h2parse`) and hands calls to the
:class:`~attacker.recorder.Recorder`. If the parser falls behind past the queue's bound, the
connection it was parsing stops being recorded (HTTP/2 header compression cannot resume after a
gap); this is counted as ``connections_lost``, and traffic is never affected.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import socket
import threading
import time

from .h2parse import GrpcConnection, ParseError

log = logging.getLogger("attacker.tap")


def _nodelay(transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer(transport) -> str:
    addr = transport.get_extra_info("peername")
    if not addr:
        return ""
    if ":" in addr[0]:
        return f"ipv6:[{addr[0]}]:{addr[1]}"
    return f"ipv4:{addr[0]}:{addr[1]}"


class Parser:
    """The parser thread: chunks in (bounded), recorder events out.

    The relay only appends to a deque (no lock, no wake-up): the thread drains it every
    ``linger`` seconds, so the relay's thread is not made to hand the GIL over for every chunk.
    """

    def __init__(self, recorder, max_message: int, max_queue_bytes: int = 256 << 20, linger: float = 0.005):
        self.recorder = recorder
        self.max_message = max_message
        self.max_queue_bytes = max_queue_bytes
        self.linger = linger
        self.counts: collections.Counter = collections.Counter()
        self.methods: dict[str, int] = {}  # calls seen per method
        self._queue: collections.deque = collections.deque()
        self._in_bytes = 0   # written by the relay's thread only
        self._out_bytes = 0  # written by the parser thread only
        self._closing = False
        self._lost: set[int] = set()
        self._conns: dict[int, GrpcConnection] = {}
        self._thread = threading.Thread(target=self._run, name="tap-parser", daemon=True)
        self._thread.start()

    # called on the event loop ------------------------------------------------------------------
    def chunk(self, conn: int, upstream: bool, data: bytes) -> None:
        if conn in self._lost:
            return
        if self._in_bytes - self._out_bytes + len(data) > self.max_queue_bytes:
            self._lost.add(conn)
            self._queue.append(("lost", conn, time.time(), None))
            self.counts["connections_lost"] += 1
            return
        self._in_bytes += len(data)
        self._queue.append((upstream, conn, time.time(), data))

    def opened(self, conn: int, peer: str) -> None:
        self._queue.append(("open", conn, time.time(), peer))

    def closed(self, conn: int) -> None:
        self._queue.append(("close", conn, time.time(), None))

    # control -------------------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every chunk queued so far has been parsed."""
        deadline = time.monotonic() + timeout
        target = len(self._queue) + self.counts["handled"]
        while self.counts["handled"] < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        self._thread.join(timeout)

    def stats(self) -> dict:
        c = self.counts
        return {"forwarded": dict(self.methods), "connections": c["connections"],
                "connections_lost": c["connections_lost"], "connections_unparsed": c["connections_unparsed"],
                "bytes_relayed": c["bytes"], "parser_queue_bytes": self._in_bytes - self._out_bytes}

    # the thread ----------------------------------------------------------------------------------
    def _emit(self, kind: str, *payload) -> None:
        self.counts[f"calls:{kind}"] += 1
        size = sum(len(p) for p in payload if isinstance(p, (bytes, bytearray)))
        self.recorder.submit(kind, *payload, size=size)

    def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    break
                time.sleep(self.linger)
                continue
            while queue:
                kind, conn, when, data = queue.popleft()
                if isinstance(data, (bytes, bytearray)):
                    self._out_bytes += len(data)
                try:
                    self._handle(kind, conn, when, data)
                except Exception:  # a parser bug must not kill the thread
                    log.exception("tap parser error")
                    self._conns.pop(conn, None)
                self.counts["handled"] += 1
        for conn in list(self._conns):
            self._handle("close", conn, time.time(), None)

    def _handle(self, kind, conn, when, data) -> None:
        if kind == "open":
            self.counts["connections"] += 1
            self._conns[conn] = GrpcConnection(str(conn), data, self._emit, self.max_message, self.methods)
            return
        state = self._conns.get(conn)
        if kind in ("close", "lost"):
            if state is not None:
                del self._conns[conn]
                state.close(when)
            if kind == "lost":
                self.recorder.fail(1, f"connection {conn}: parser queue full, recording of this "
                                           "connection stopped (HTTP/2 cannot resume after a gap)")
            return
        self.counts["bytes"] += len(data)
        if state is None or state.broken:
            return
        try:
            state.feed(kind, data, when)
        except ParseError as exc:
            self.counts["connections_unparsed"] += 1
            self.recorder.fail(1, f"connection {conn} ({state.peer}) cannot be decoded, not recording it: {exc}")
            state.close(when)


class _Client(asyncio.Protocol):
    def __init__(self, relay: "Relay"):
        self.relay = relay
        self.transport = None
        self.upstream = None
        self.conn = next(relay.ids)

    def connection_made(self, transport) -> None:
        self.transport = transport
        _nodelay(transport)
        transport.pause_reading()
        self.relay.clients.add(self)
        if self.relay.parser is not None:
            self.relay.parser.opened(self.conn, _peer(transport))
        self.relay.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self.relay.loop.create_connection(lambda: _Upstream(self), self.relay.host, self.relay.port)
        except OSError as exc:
            log.warning("cannot reach the upstream %s:%s: %s", self.relay.host, self.relay.port, exc)
            self.transport.close()
            return
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.relay.last_activity = time.monotonic()
        if self.relay.parser is not None:  # queued before it is relayed: a flush() after the reply sees it
            self.relay.parser.chunk(self.conn, True, data)
        self.upstream.write(data)

    def eof_received(self):
        if self.upstream is not None and self.upstream.can_write_eof():
            self.upstream.write_eof()
        return True

    def connection_lost(self, exc) -> None:
        self.relay.clients.discard(self)
        if self.upstream is not None:
            self.upstream.close()
        if self.relay.parser is not None:
            self.relay.parser.closed(self.conn)

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client):
        self.client = client

    def connection_made(self, transport) -> None:
        _nodelay(transport)
        self.client.upstream = transport
        if self.client.transport.is_closing():
            transport.close()

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.relay.last_activity = time.monotonic()
        if client.relay.parser is not None:
            client.relay.parser.chunk(client.conn, False, data)
        client.transport.write(data)

    def eof_received(self):
        if self.client.transport.can_write_eof():
            self.client.transport.write_eof()
        return True

    def connection_lost(self, exc) -> None:
        self.client.transport.close()

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()


class Relay:
    """Accept on ``listen`` (HOST:PORT), relay every connection to ``upstream``; parse into ``parser``."""

    def __init__(self, listen: str, upstream: str, parser: Parser | None):
        self.listen_host, _, listen_port = listen.rpartition(":")
        self.listen_port = int(listen_port)
        self.host, _, port = upstream.rpartition(":")
        self.host = self.host.strip("[]") or "localhost"
        self.port = int(port)
        self.parser = parser
        self.ids = itertools.count(1)
        self.clients: set[_Client] = set()
        self.last_activity = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.loop = asyncio.get_running_loop()
        host = self.listen_host.strip("[]") or None
        self.server = await self.loop.create_server(lambda: _Client(self), host, self.listen_port,
                                                    reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self, grace: float) -> None:
        """Stop accepting; give open connections up to ``grace`` seconds of quiet, then close them."""
        if self.server is None:
            return
        self.server.close()
        deadline = time.monotonic() + grace
        while self.clients and time.monotonic() < deadline and time.monotonic() - self.last_activity < 0.25:
            await asyncio.sleep(0.05)
        for client in list(self.clients):
            client.transport.close()
        await self.server.wait_closed()
