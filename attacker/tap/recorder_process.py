"""The passive tap's recorder in its own process, so that decoding and writing never hold the
relay's GIL.

The relay (parent) hands each chunk it relays to :meth:`RecorderProcess.chunk`, which sends it
with a 17-byte header over a Unix socket pair with one ``sendmsg`` (no copy in Python, no lock;
what the socket cannot take at once waits in a bounded buffer drained when the socket is writable).
The child decodes HTTP/2 + gRPC (:mod:`attacker.tap.h2parse`) and records through the usual
:class:`~attacker.tap.recorder.Recorder`. A control pipe answers ``stats`` and ``flush`` (a marker sent
in-band after the chunks, so a flush covers everything relayed before it).

If the buffer towards the child passes its bound, the connection being relayed stops being
recorded (``connections_lost``: HTTP/2 header compression cannot resume after a gap); if the child
dies, recording stops and is counted. Traffic is never affected.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import subprocess
import struct
import sys
import threading
import time

log = logging.getLogger("attacker.tap")

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
HEADER = struct.Struct("<IBdI")  # connection id, kind, time, payload length
CLIENT, SERVER, OPEN, CLOSE, LOST, FLUSH = range(6)
SOCKET_BUFFER = 4 << 20


class RecorderProcess:
    """Parent side. ``start()`` on the relay's event loop; ``chunk``/``opened``/``closed`` from it too;
    ``stats``/``flush``/``close`` from any thread."""

    def __init__(self, config: dict, max_buffer: int = 256 << 20):
        self.config = config
        self.max_buffer = max_buffer
        self.counts: collections.Counter = collections.Counter()
        self._lost: set[int] = set()
        self._pending: collections.deque = collections.deque()
        self._pending_bytes = 0
        self._dead = ""
        self._loop = None
        self._control_lock = threading.Lock()
        self._tokens = iter(range(1, 1 << 62))
        self._sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (self._sock, child_sock):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self._control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control_file = self._control.makefile("rwb")
        # A fresh interpreter (not multiprocessing, which would re-import the parent's __main__ and
        # with it torch): it imports only the decoder and the store.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "attacker.tap.recorder_process", str(child_sock.fileno()),
             str(child_control.fileno()), json.dumps(config)],
            pass_fds=(child_sock.fileno(), child_control.fileno()), stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])))
        child_sock.close()
        child_control.close()
        self._sock.setblocking(False)
        self.final_stats: dict | None = None

    def start(self, loop, timeout: float = 30.0) -> dict | None:
        """Remember the relay's loop; wait until the child has opened the store (its first report)."""
        self._loop = loop
        with self._control_lock:
            try:
                self._control.settimeout(timeout)
                line = self._control_file.readline()
                reply = json.loads(line) if line else None
            except (OSError, ValueError):
                reply = None
        if not reply or reply[0] != "ready":
            self._died("the recorder process did not start")
            return None
        return reply[-1]

    # --- on the event loop ---------------------------------------------------------------------
    def chunk(self, conn: int, upstream: bool, data: bytes) -> None:
        if conn in self._lost or self._dead:
            return
        if self._pending_bytes + len(data) > self.max_buffer:
            self._lost.add(conn)
            self.counts["connections_lost"] += 1
            self._send(conn, LOST, b"")
            return
        self._send(conn, CLIENT if upstream else SERVER, data)

    def opened(self, conn: int, peer: str) -> None:
        self._send(conn, OPEN, peer.encode())

    def closed(self, conn: int) -> None:
        self._lost.discard(conn)
        self._send(conn, CLOSE, b"")

    def _send(self, conn: int, kind: int, data: bytes) -> None:
        if self._dead:
            return
        header = HEADER.pack(conn, kind, time.time(), len(data))
        if not self._pending:
            try:
                sent = self._sock.sendmsg([header, data] if data else [header])
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                return self._died(f"the recorder process is gone ({exc})")
            if sent == len(header) + len(data):
                return
            if sent < len(header):
                self._pending.append(header[sent:])
                if data:
                    self._pending.append(data)
            else:
                self._pending.append(memoryview(data)[sent - len(header):])
            self._pending_bytes += len(header) + len(data) - sent
            self._loop.add_writer(self._sock.fileno(), self._drain)
            return
        self._pending.append(header)
        if data:
            self._pending.append(data)
        self._pending_bytes += len(header) + len(data)

    def _drain(self) -> None:
        while self._pending:
            part = self._pending[0]
            try:
                sent = self._sock.send(part)
            except BlockingIOError:
                return
            except OSError as exc:
                self._loop.remove_writer(self._sock.fileno())
                return self._died(f"the recorder process is gone ({exc})")
            self._pending_bytes -= sent
            if sent < len(part):
                self._pending[0] = memoryview(part)[sent:]
                return
            self._pending.popleft()
        self._loop.remove_writer(self._sock.fileno())

    def _died(self, why: str) -> None:
        if not self._dead:
            self._dead = why
            self._pending.clear()
            self._pending_bytes = 0
            log.error("%s: recording stopped, traffic is unaffected", why)

    # --- from any thread -----------------------------------------------------------------------
    def _request(self, message: list, timeout: float):
        """Send a control request, return the matching reply's last element (None on timeout)."""
        with self._control_lock:
            if self._dead or self._process.poll() is not None:
                return None
            try:
                self._control.settimeout(timeout)
                self._control_file.write(json.dumps(message).encode() + b"\n")
                self._control_file.flush()
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    line = self._control_file.readline()
                    if not line:
                        return None
                    reply = json.loads(line)
                    if reply[0] == message[0] and (len(message) < 2 or reply[1] == message[1]):
                        return reply[-1]
            except (OSError, ValueError):
                return None
        return None

    def flush(self, timeout: float = 10.0) -> bool:
        token = next(self._tokens)
        done = threading.Event()
        self._loop.call_soon_threadsafe(lambda: (self._send(0, FLUSH, struct.pack("<Q", token)), done.set()))
        done.wait(timeout)
        return bool(self._request(["flush", token], timeout))

    def stats(self, timeout: float = 5.0) -> dict:
        child = self.final_stats or self._request(["stats"], timeout) or {}
        out = dict(child)
        out["connections_lost"] = out.get("connections_lost", 0) + self.counts["connections_lost"]
        out["recorder_buffer_bytes"] = self._pending_bytes
        if self._dead:
            out["recorder_dead"] = self._dead
        return out

    def close(self, timeout: float = 30.0) -> None:
        """Let the child drain what it was sent, finish writing, report its final counters and exit."""
        deadline = time.monotonic() + timeout
        while self._pending and not self._dead and time.monotonic() < deadline:
            time.sleep(0.01)  # the event loop drains it (close runs off the loop's thread)
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self._control_lock:
            try:
                self._control.settimeout(max(0.1, deadline - time.monotonic()))
                for line in self._control_file:
                    reply = json.loads(line)
                    if reply[0] == "final":
                        self.final_stats = reply[-1]
                        break
            except (OSError, ValueError):
                pass
        try:
            self._process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._sock.close()
        self._control_file.close()
        self._control.close()


# --- the child ---------------------------------------------------------------------------------

class _Reader:
    """Records off the socket with few wake-ups and no copies.

    After the first bytes of a burst arrive it waits ``linger`` seconds and then takes everything
    the socket holds, so a busy relay wakes this process about once per ``linger`` rather than once
    per chunk; a record inside one received block is returned as a view of it (zero copy).
    """

    def __init__(self, sock: socket.socket, linger: float):
        self.sock, self.linger = sock, linger
        self.blocks: collections.deque = collections.deque()
        self.offset = 0  # into blocks[0]
        self.available = 0
        self.eof = False

    def _fill(self) -> None:
        try:
            block = self.sock.recv(1 << 20)
        except OSError:
            block = b""
        if not block:
            self.eof = True
            return
        self.blocks.append(block)
        self.available += len(block)
        if self.linger:
            time.sleep(self.linger)
        while True:
            try:
                block = self.sock.recv(4 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                block = b""
            if not block:
                self.eof = True
                return
            self.blocks.append(block)
            self.available += len(block)

    def take(self, n: int):
        """The next ``n`` bytes (a memoryview or bytes), or None at the end of the stream."""
        while self.available < n:
            if self.eof:
                return None
            self._fill()
        first = self.blocks[0]
        if len(first) - self.offset >= n:
            out = memoryview(first)[self.offset:self.offset + n]
            self.offset += n
        else:
            parts, need = [], n
            while need:
                block = self.blocks[0]
                piece = memoryview(block)[self.offset:self.offset + need]
                parts.append(piece)
                need -= len(piece)
                self.offset += len(piece)
                if self.offset == len(block):
                    self.blocks.popleft()
                    self.offset = 0
            out = b"".join(parts)
        self.available -= n
        if self.blocks and self.offset == len(self.blocks[0]):
            self.blocks.popleft()
            self.offset = 0
        return out


class ChunkDecoder:
    """Connections' byte streams in, captures out: one :class:`~attacker.tap.h2parse.GrpcConnection` per
    connection, feeding ``recorder``. Used by the recorder process (the relay's chunks) and, in the
    tap's own process, by the sniffer (which is not in the traffic's path, so it needs no process of
    its own)."""

    def __init__(self, recorder, max_message_bytes: int):
        import hpack.hpack

        from .h2parse import Encrypted, GrpcConnection, ParseError

        hpack.hpack.log.disabled = True  # its per-header debug logging costs more than the decoding
        self._GrpcConnection, self._ParseError, self._Encrypted = GrpcConnection, ParseError, Encrypted
        self.recorder, self.max_message_bytes = recorder, max_message_bytes
        self.counts: collections.Counter = collections.Counter()
        self.methods: dict[str, int] = {}
        self.conns: dict = {}

    def _emit(self, kind: str, *payload) -> None:
        size = sum(len(p) for p in payload if isinstance(p, (bytes, bytearray, memoryview)))
        self.recorder.submit(kind, *payload, size=size)

    def opened(self, conn: int, peer: str) -> None:
        self.counts["connections"] += 1
        self.conns[conn] = self._GrpcConnection(str(conn), peer, self._emit, self.max_message_bytes, self.methods)

    def chunk(self, conn: int, from_client: bool, data, when: float | None = None) -> None:
        self.counts["bytes"] += len(data)
        state = self.conns.get(conn)
        if state is None or state.broken:
            return
        when = time.time() if when is None else when
        try:
            state.feed(from_client, data, when)
        except self._Encrypted:  # TLS: nothing to record, and nothing wrong with the tap
            self.counts["connections_unreadable"] += 1
            log.info("connection %s (%s) is encrypted (TLS): counted as unreadable, not recorded", conn, state.peer)
            state.close(when)
        except self._ParseError as exc:
            self.counts["connections_unparsed"] += 1
            self.recorder.fail(1, f"connection {conn} ({state.peer}) cannot be decoded, not recording it: {exc}")
            state.close(when)
        except Exception:
            log.exception("tap parser error")
            self.conns.pop(conn, None)

    def closed(self, conn: int, when: float | None = None) -> None:
        state = self.conns.pop(conn, None)
        if state is not None:
            state.close(time.time() if when is None else when)

    def lost(self, conn: int, when: float | None = None) -> None:
        self.closed(conn, when)
        self.counts["connections_lost"] += 1
        self.recorder.fail(1, f"connection {conn}: the recorder fell behind, recording of this connection "
                              "stopped (HTTP/2 cannot resume after a gap)")

    def close_all(self) -> None:
        for conn in list(self.conns):
            self.closed(conn)

    def stats(self) -> dict:
        return {"forwarded": dict(self.methods), "connections": self.counts["connections"],
                "connections_lost": self.counts["connections_lost"],
                "connections_unparsed": self.counts["connections_unparsed"],
                "connections_unreadable": self.counts["connections_unreadable"], "bytes_relayed": self.counts["bytes"]}


def child_main(sock: socket.socket, control: socket.socket, config: dict) -> None:
    logging.basicConfig(level=config.get("log_level", logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .recorder import Recorder

    recorder = Recorder(config["store"], config["max_queue"], config["max_queue_bytes"], config["max_captures"],
                        config["max_store_bytes"], stats_interval=config["stats_interval"])
    decoder = ChunkDecoder(recorder, config["max_message_bytes"])
    send_lock = threading.Lock()
    control_file = control.makefile("rwb")

    def reply(*message) -> None:
        with send_lock:
            try:
                control_file.write(json.dumps(message).encode() + b"\n")
                control_file.flush()
            except OSError:
                pass

    recorder.extra_stats = lambda: dict(decoder.stats(), mode="passive")  # merged into recorder.stats()
    stats = recorder.stats

    def serve_control() -> None:
        for line in control_file:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message[0] == "stats":
                reply("stats", stats())
            # "flush" requests are answered when their in-band marker is reached

    recorder.ready.wait(10)  # its writer thread opens the store first: report how that went
    reply("ready", stats())
    threading.Thread(target=serve_control, name="tap-recorder-control", daemon=True).start()

    reader = _Reader(sock, config.get("linger", 0.005))
    while True:
        header = reader.take(HEADER.size)
        if header is None:
            break
        conn, kind, when, length = HEADER.unpack(header)
        data = reader.take(length) if length else b""
        if data is None:
            break
        if kind in (CLIENT, SERVER):
            decoder.chunk(conn, kind == CLIENT, data, when)
        elif kind == OPEN:
            decoder.opened(conn, bytes(data).decode())
        elif kind == CLOSE:
            decoder.closed(conn, when)
        elif kind == LOST:
            decoder.lost(conn, when)
        elif kind == FLUSH:
            (token,) = struct.unpack("<Q", bytes(data))
            recorder.flush(30)
            reply("flush", token, True)
    decoder.close_all()
    recorder.close()
    reply("final", stats())
    os._exit(0)


def main(argv: list[str]) -> None:
    from .heap import keep_freed_memory

    data_fd, control_fd, config = int(argv[0]), int(argv[1]), json.loads(argv[2])
    signal_ignore()
    keep_freed_memory()
    if config.get("idle_priority"):
        from .priority import run_at_idle_priority

        run_at_idle_priority(whole_process=True)
    child_main(socket.socket(fileno=data_fd), socket.socket(fileno=control_fd), config)


def signal_ignore() -> None:
    """The parent decides when recording ends (it closes the socket); Ctrl-C in a terminal reaches
    the whole process group, so the child ignores SIGINT/SIGTERM and drains instead."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    main(sys.argv[1:])
