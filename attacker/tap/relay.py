"""The passive tap's relay: a TCP relay between the edge and the cloud.

Each accepted connection gets its own connection to the upstream, and bytes are relayed both ways
unchanged by asyncio protocols (no parsing, no copies, TCP_NODELAY, back-pressure by pausing the
other side), so everything gRPC puts on the wire passes through as it is: messages, status codes,
initial and trailing metadata, deadlines (``grpc-timeout``), keepalives, flow control, and the
size limits the two endpoints enforce. Each chunk is also handed (before it is relayed) to a
``sink`` with ``opened(conn, peer)``, ``chunk(conn, from_client, data)`` and ``closed(conn)``: the
recorder process (:mod:`attacker.tap.recorder_process`), which decodes and records it.

Several cloud replicas (a name with several addresses, or a comma-separated list): a relay cannot
balance calls, only connections, so each accepted connection goes to the next address in turn (the
name is resolved again for each one, so replicas added or removed are seen), and an address that
refuses is skipped for the next. An edge with one connection therefore still reaches one replica
through a relay; edges (or channels) with several connections spread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time

from protos.targets import addresses

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


class _Client(asyncio.Protocol):
    """The edge's side of one relayed connection.

    Reading is paused until the upstream connection is made, but bytes that arrive before it are
    held (``early``) rather than assumed impossible: CPython before 3.11.3 did not honour a
    ``pause_reading()`` made in ``connection_made`` (the transport started reading anyway), so on
    Debian 12's Python 3.11.2 the edge's preface reached ``data_received`` while the upstream was
    still being connected (a host name to resolve), and every connection through the relay failed.
    HTTP/2 flow control bounds what an edge can send before it hears from the cloud, so the hold is
    small. An EOF that arrives early is held the same way.
    """

    def __init__(self, relay: "Relay"):
        self.relay = relay
        self.transport = None
        self.upstream = None
        self.conn = next(relay.ids)
        self.early: list[bytes] = []
        self.early_eof = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        _nodelay(transport)
        transport.pause_reading()
        self.relay.clients.add(self)
        self.relay.connections += 1
        if self.relay.parser is not None:
            self.relay.parser.opened(self.conn, _peer(transport))
        self.relay.loop.create_task(self._connect())

    async def _connect(self) -> None:
        error: OSError | None = None
        for host, port in await self.relay.candidates():
            try:
                await self.relay.loop.create_connection(lambda: _Upstream(self), host, port)
                break
            except OSError as exc:
                error = exc
        else:
            log.warning("cannot reach the upstream %s: %s", self.relay.upstream, error)
            self.transport.close()
            return
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.relay.last_activity = time.monotonic()
        if self.relay.parser is not None:  # queued before it is relayed: a flush() after the reply sees it
            self.relay.parser.chunk(self.conn, True, data)
        if self.upstream is None:
            self.early.append(data)
            self.transport.pause_reading()  # honoured now that connection_made has returned
        else:
            self.upstream.write(data)

    def upstream_connected(self, upstream) -> None:
        """Relay what arrived before the upstream was connected, in order, then relay directly."""
        self.upstream = upstream
        if self.early:
            upstream.write(b"".join(self.early))
            self.early.clear()
        if self.early_eof and upstream.can_write_eof():
            upstream.write_eof()

    def eof_received(self):
        if self.upstream is None:
            self.early_eof = True
        elif self.upstream.can_write_eof():
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
        self.client.upstream_connected(transport)
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

    def __init__(self, listen: str, upstream: str, parser=None):
        self.listen_host, _, listen_port = listen.rpartition(":")
        self.listen_port = int(listen_port)
        self.upstream = upstream
        self.upstreams = addresses(upstream)
        self.turns = itertools.count()
        self.parser = parser
        self.ids = itertools.count(1)
        self.clients: set[_Client] = set()
        self.connections = 0
        self.last_activity = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.loop = asyncio.get_running_loop()
        host = self.listen_host.strip("[]") or None
        self.server = await self.loop.create_server(lambda: _Client(self), host, self.listen_port,
                                                    reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    async def candidates(self) -> list[tuple[str, int]]:
        """Every address of the upstream, starting at the next one in turn (round robin per connection)."""
        found: list[tuple[str, int]] = []
        for host, port in self.upstreams:
            try:
                infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                continue
            found += [(info[4][0], port) for info in infos]
        found = list(dict.fromkeys(found)) or list(self.upstreams)  # unresolvable: let connecting say why
        start = next(self.turns) % len(found)
        return found[start:] + found[:start]

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
