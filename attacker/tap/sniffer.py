"""The sniff tap: an eavesdropper that reads copies of the packets between the edge and the cloud.

Unlike the relay (:mod:`attacker.tap.relay`), nothing passes through the attacker: the edge talks to
the cloud directly and the kernel hands this process a copy of each TCP segment to or from the
cloud's port on one network interface (a Linux ``AF_PACKET`` socket with a kernel-side filter, so
other traffic is never copied). The segments of each connection are put back in order and handed
to the same decoder as the relay's chunks (``opened``/``chunk``/``closed``,
:class:`~attacker.tap.recorder_process.ChunkDecoder`), which decodes HTTP/2 + gRPC and records. Being out
of the traffic's path, the sniffer decodes in its own process (no hand-off to a recorder process,
three copies of each payload fewer than the relay). The victims do not wait for it, but the kernel
does work for it in their context, so it asks for as little as it can:

- on a loopback interface every segment shows up twice, as sent and as received: the socket asks
  not to see outgoing packets at all (``PACKET_IGNORE_OUTGOING``) and keeps the received copy. On
  any other interface it keeps both directions (inside the cloud's namespace, the requests come
  in and the replies go out). Its kernel filter drops pure acknowledgements (nothing to record in
  them), so only segments with data, SYN, FIN or RST are cloned for it;
- the socket is read on a clock (every ``poll_interval``, 1 ms by default), not when a packet
  arrives: a sleeping reader woken by each packet makes the sender's core interrupt this process's
  core every time, which slowed small calls by 10-20% even with the sniffer on its own core
  (``benchmarks/results/tap_overhead*.md``). The kernel queues the packets in between (64 MiB).
  After ``QUIET_AFTER`` (100 ms) without a packet the clock stops, so an idle sniffer uses no
  CPU, and the next packet wakes it and starts the clock again;
- with ``--priority idle`` (:mod:`attacker.tap.priority`) it reads and decodes only on cores that
  nothing else wants, leaving the packets in the kernel's queue until then.

Needs ``CAP_NET_RAW`` (root, or ``cap_add: [NET_RAW]`` in compose) and must start before the edge
connects: HTTP/2 header compression cannot be decoded from the middle of a connection, so
connections already open are counted (``connections_unparsed``) and skipped. A gap in a
connection (the kernel dropped packets because this process fell behind) stops the recording of
that connection and is counted (``connections_lost``); traffic is never affected. IPv4 and IPv6
(without extension headers) over Ethernet-framed interfaces (``lo``, ``eth0``).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import socket
import struct
import time
from pathlib import Path

log = logging.getLogger("attacker.tap")

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
RECV_BUFFER = 64 << 20
POLL_INTERVAL = 0.001  # seconds between reads of the packet socket (0: read whenever a packet arrives)
QUIET_AFTER = 0.1  # seconds without a packet after which the clock stops and the next packet wakes the sniffer
MAX_AHEAD = 32 << 20  # early segments held while waiting for a missing one; past it, the gap is a loss
SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10


def can_sniff() -> bool:
    """Whether this process may open a packet socket (CAP_NET_RAW on Linux)."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
        return True
    except (OSError, AttributeError):
        return False


class SniffError(OSError):
    """The packet socket cannot be opened (no CAP_NET_RAW, no such interface)."""


def port_filter(port: int, host: bytes | None = None, outgoing: bool = False) -> list[tuple[int, int, int, int]]:
    """Classic BPF: accept IPv4/IPv6 TCP segments to or from ``port`` (and, given ``host``, a 4- or
    16-byte address, to or from that address only) that carry data or open or close a connection
    (SYN, FIN, RST); sent ones (PACKET_OUTGOING) only if ``outgoing``.

    On a loopback interface every packet shows up twice, once as sent and once as received:
    keeping only the received copy sees each segment once. On other interfaces the host's own
    packets are only ever seen as sent, so ``outgoing`` must be set there. Pure acknowledgements
    carry nothing to record: rejecting them in the kernel spares the victims a packet clone and
    this process a wake-up for each. Written with labels; :func:`_assemble` turns them into the
    relative jumps the kernel wants.
    """
    pkttype = 0xFFFFF004  # SKF_AD_OFF + SKF_AD_PKTTYPE
    v4 = v6 = None  # the host's address as 32-bit words, for the family it belongs to
    if host is not None:
        words = [int.from_bytes(host[i:i + 4], "big") for i in range(0, len(host), 4)]
        v4, v6 = (words, "reject") if len(host) == 4 else ("reject", words)

    def address(at: int, words, match: str, miss: str) -> list:
        """Compare the address at byte ``at`` with ``words``: on to ``match`` or ``miss``."""
        if words is None:
            return [("ja", match)]
        if words == "reject":
            return [("ja", "reject")]
        out = []
        for k, word in enumerate(words):
            last = k == len(words) - 1
            out += [("ld", at + 4 * k), ("jeq", word, match if last else None, miss)]
        return out

    return _assemble([
        *([] if outgoing else [("ldb", pkttype), ("jeq", PACKET_OUTGOING, "reject", None)]),
        ("ldh", 12), ("jeq", 0x86DD, None, "ipv4"),
        ("ldb", 20), ("jeq", 6, None, "reject"),                 # IPv6: next header TCP
        ("ldh", 54), ("jeq", port, None, "v6dst"),               # from the port ...
        *address(22, v6, "v6port", "v6dst"),                     # ... of the host
        "v6dst", ("ldh", 56), ("jeq", port, None, "reject"),     # to the port ...
        *address(38, v6, "v6port", "reject"),                    # ... of the host
        "v6port", ("ldb", 67), ("jset", SYN | FIN | RST, "accept", None),
        ("ldb", 66), ("and", 0xF0), ("rsh", 2), ("tax",),        # X = TCP header length
        ("ldh", 18), ("jgtx", 0, "accept", "reject"),            # payload length > TCP header
        "ipv4", ("jeq", 0x0800, None, "reject"),
        ("ldb", 23), ("jeq", 6, None, "reject"),                 # IPv4: protocol TCP
        ("ldh", 20), ("jset", 0x1FFF, "reject", None),           # not a later fragment
        ("ldxmsh", 14),                                          # X = IP header length
        ("ldhx", 14), ("jeq", port, None, "v4dst"),              # from the port ...
        *address(26, v4, "v4port", "v4dst"),                     # ... of the host
        "v4dst", ("ldhx", 16), ("jeq", port, None, "reject"),    # to the port ...
        *address(30, v4, "v4port", "reject"),                    # ... of the host
        "v4port", ("ldbx", 27), ("jset", SYN | FIN | RST, "accept", None),
        ("ldbx", 26), ("and", 0xF0), ("rsh", 2),                # A = TCP header length
        ("addx",), ("tax",),                                     # X = IP + TCP header lengths
        ("ldh", 16), ("jeq", 0, "accept", None),                 # total length 0: an offload packet
        ("jgtx", 0, "accept", "reject"),                         # total length > headers: data
        "accept", ("ret", 0x40000),
        "reject", ("ret", 0),
    ])


# classic BPF opcodes (linux/filter.h): loads, ALU, jumps (jgtx compares with X), return
_OPS = {"ld": 0x20, "ldb": 0x30, "ldh": 0x28, "ja": 0x05, "ldbx": 0x50, "ldhx": 0x48, "ldxmsh": 0xB1, "ret": 0x06,
        "jeq": 0x15, "jset": 0x45, "jgtx": 0x2D, "and": 0x54, "rsh": 0x74, "addx": 0x0C, "tax": 0x07}


def _assemble(lines: list) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) from ``(op, k)`` / ``(op,)`` / ``(jump, k, true_label, false_label)`` /
    ``("ja", label)`` and label strings; a ``None`` label means the next instruction."""
    labels, n = {}, 0
    for line in lines:
        if isinstance(line, str):
            labels[line] = n
        else:
            n += 1
    out = []
    for line in lines:
        if isinstance(line, str):
            continue
        here = len(out)
        if len(line) == 4:
            op, k, t, f = line
            rel = [0 if lab is None else labels[lab] - here - 1 for lab in (t, f)]
            out.append((_OPS[op], rel[0], rel[1], k))
        elif line[0] == "ja":  # unconditional: the offset is in k
            out.append((_OPS["ja"], 0, 0, labels[line[1]] - here - 1))
        else:
            out.append((_OPS[line[0]], 0, 0, line[1] if len(line) > 1 else 0))
    return out


def _attach(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    insns = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(insns)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def is_loopback(interface: str) -> bool:
    """Whether ``interface`` is a loopback device (IFF_LOOPBACK in its flags; ``lo`` if unknown)."""
    try:
        return bool(int(Path(f"/sys/class/net/{interface}/flags").read_text(), 16) & 0x8)
    except (OSError, ValueError):
        return interface == "lo"


def open_packet_socket(interface: str, port: int, host: bytes | None = None) -> socket.socket:
    """A non-blocking packet socket on ``interface`` that receives the TCP segments of ``port`` (of
    the address ``host`` only, if given), each segment once, in both directions."""
    loopback = is_loopback(interface)
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError as exc:
        raise SniffError(f"sniffing needs CAP_NET_RAW (run as root, or add NET_RAW to the container): {exc}") from exc
    try:
        if loopback:  # the kernel then clones no outgoing packet for this socket at all (Linux 4.20+)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # the filter rejects them instead, after the clone
        _attach(sock, port_filter(port, host, outgoing=not loopback))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECV_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((interface, 0))
    except OSError as exc:
        sock.close()
        raise SniffError(f"cannot sniff on interface {interface!r}: {exc}") from exc
    sock.setblocking(False)
    return sock


def upstream_address(host: str | None) -> bytes | None:
    """The packed address to filter on for an ``--upstream`` host: an IP literal is matched exactly;
    a name (``localhost``, a compose service) or an unspecified address matches any address."""
    if not host:
        return None
    host = host.strip("[]")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, host)
        except OSError:
            continue
        return None if not any(packed) else packed
    return None


class _Conn:
    __slots__ = ("id", "next_seq", "ahead", "ahead_bytes", "fins", "lost")

    def __init__(self, conn_id: int, client_seq: int):
        self.id = conn_id
        self.next_seq = [client_seq, None]  # next expected sequence number: [from client, from server]
        self.ahead: tuple[dict, dict] = ({}, {})  # segments that arrived early: seq -> bytes, per side
        self.ahead_bytes = 0
        self.fins = 0
        self.lost = False


class Sniffer:
    """Reassemble the TCP streams of ``port`` seen on ``interface`` into ``parser`` (on the event loop)."""

    def __init__(self, interface: str, port: int, parser=None, poll_interval: float = POLL_INTERVAL,
                 host: str | None = None):
        self.interface, self.port, self.parser = interface, port, parser
        self.host = upstream_address(host)  # packed address, or None: any address with that port
        self.poll_interval = poll_interval
        self._tick = None
        self.ids = itertools.count(1)
        self.conns: dict[tuple, _Conn] = {}
        self.clients = self.conns  # open connections, for the tap's stats
        self.connections = 0
        self.counts = {"packets": 0, "connections_unparsed": 0, "connections_lost": 0}
        self.sock: socket.socket | None = None
        self.loop = None
        self._buf = bytearray(1 << 18)

    async def start(self) -> int:
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.sock = open_packet_socket(self.interface, self.port, self.host)
        self._last_packet = time.monotonic()
        if self.poll_interval > 0:
            self._tick = self.loop.call_later(self.poll_interval, self._poll)
        else:
            self.loop.add_reader(self.sock.fileno(), self._readable)
        return self.port

    def _poll(self) -> None:
        """Read what arrived since the last tick, then sleep until the next one. The kernel queues
        packets meanwhile; no packet wakes this process, so the victims' cores send no wake-up.
        After ``QUIET_AFTER`` without a packet the clock stops (an idle tap uses no CPU) and the next
        packet wakes the sniffer, which starts the clock again."""
        now = time.monotonic()
        if self._readable():
            self._last_packet = now
        if self.sock is None:
            return
        if now - self._last_packet >= QUIET_AFTER:
            self._tick = None
            self.loop.add_reader(self.sock.fileno(), self._woken)
        else:
            self._tick = self.loop.call_later(self.poll_interval, self._poll)

    def _woken(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self._last_packet = time.monotonic()
        self._poll()

    def drain(self) -> None:
        """Take what the kernel holds now (on the loop's thread)."""
        if self.sock is not None:
            self._readable()

    async def stop(self, grace: float) -> None:
        if self.sock is None:
            return
        self._readable()  # what the kernel already holds
        if self._tick is not None:
            self._tick.cancel()
        self.loop.remove_reader(self.sock.fileno())  # (when waiting for a packet)
        self.sock.close()
        self.sock = None
        for conn in list(self.conns.values()):
            self._close(conn)
        self.conns.clear()

    def _readable(self) -> int:
        """Handle every packet the kernel holds; returns how many there were."""
        buf, recv = self._buf, self.sock.recv_into
        got = 0
        while True:
            try:
                n = recv(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("packet socket error: %s", exc)
                break
            got += 1
            self._segment(memoryview(buf)[:n])
        self.counts["packets"] += got
        return got

    def _segment(self, pkt: memoryview) -> None:
        ethertype = (pkt[12] << 8) | pkt[13]
        if ethertype == 0x0800:
            ihl = (pkt[14] & 0x0F) * 4
            total = (pkt[16] << 8) | pkt[17]
            src, dst = bytes(pkt[26:30]), bytes(pkt[30:34])
            tcp, end = 14 + ihl, (14 + total if total else len(pkt))  # 0: a segmentation-offload packet
        elif ethertype == 0x86DD:
            src, dst = bytes(pkt[22:38]), bytes(pkt[38:54])
            tcp, end = 54, 54 + ((pkt[18] << 8) | pkt[19])
        else:
            return
        sport, dport, seq = struct.unpack_from("!HHI", pkt, tcp)
        offset, flags = (pkt[tcp + 12] >> 4) * 4, pkt[tcp + 13]
        host = self.host
        from_client = dport == self.port and (host is None or dst == host)
        if not from_client and (sport != self.port or (host is not None and src != host)):
            return
        key = (src, sport) if from_client else (dst, dport)
        conn = self.conns.get(key)
        if conn is None:
            if from_client and flags & SYN and not flags & ACK:  # a new connection from the edge
                conn = self.conns[key] = _Conn(next(self.ids), (seq + 1) & 0xFFFFFFFF)
                self.connections += 1
                if self.parser is not None:
                    self.parser.opened(conn.id, _peer(src, sport))
            elif not flags & (RST | FIN) and end - (tcp + offset) > 0:
                self.counts["connections_unparsed"] += 1  # opened before the tap started: skip it
                self.conns[key] = conn = _Conn(0, 0)
                conn.lost = True
            return
        side = 0 if from_client else 1
        if flags & SYN:
            if not from_client:
                conn.next_seq[1] = (seq + 1) & 0xFFFFFFFF
            return
        data = pkt[tcp + offset:end]
        if data and not conn.lost:
            self._data(conn, side, from_client, seq, bytes(data))
        if flags & RST:
            self._close(conn)
            self.conns.pop(key, None)
        elif flags & FIN:
            conn.fins += 1
            if conn.fins >= 2:
                self._close(conn)
                self.conns.pop(key, None)

    def _data(self, conn: _Conn, side: int, from_client: bool, seq: int, data: bytes) -> None:
        """Deliver in order. Segments can reach the packet socket out of order (a sender that moved
        between cores leaves its packets in two cores' queues), so early ones wait for the gap to
        fill; only when too much waits is the gap taken as packets the kernel dropped."""
        expected = conn.next_seq[side]
        if expected is None:
            return
        ahead = (seq - expected) & 0xFFFFFFFF
        if ahead >= 0x80000000:  # starts before what was delivered: a retransmission, maybe overlapping
            behind = 0x100000000 - ahead
            if behind >= len(data):
                return
            data, ahead = data[behind:], 0
        if ahead:
            early = conn.ahead[side]
            if seq not in early or len(early[seq]) < len(data):
                conn.ahead_bytes += len(data) - len(early.get(seq, b""))
                early[seq] = data
            if conn.ahead_bytes > MAX_AHEAD:
                self._lose(conn, f"{ahead} bytes were never seen (the sniffer fell behind)")
            return
        while True:
            conn.next_seq[side] = (conn.next_seq[side] + len(data)) & 0xFFFFFFFF
            if self.parser is not None:
                self.parser.chunk(conn.id, from_client, data)
            early = conn.ahead[side]
            if not early:
                return
            nxt = conn.next_seq[side]
            for start in list(early):  # anything now due (or overlapping what was just delivered)
                lead = (nxt - start) & 0xFFFFFFFF
                if lead < 0x80000000:
                    piece = early.pop(start)
                    conn.ahead_bytes -= len(piece)
                    if lead < len(piece):
                        data = piece[lead:]
                        break
            else:
                return

    def _lose(self, conn: _Conn, why: str) -> None:
        conn.lost = True
        conn.ahead = ({}, {})
        conn.ahead_bytes = 0
        self.counts["connections_lost"] += 1
        log.warning("connection %d: %s; its recording stops", conn.id, why)
        if self.parser is not None:
            self.parser.closed(conn.id)

    def _close(self, conn: _Conn) -> None:
        if conn.id and not conn.lost and self.parser is not None:
            self.parser.closed(conn.id)
        conn.lost = True


def _peer(addr: bytes, port: int) -> str:
    if len(addr) == 4:
        return f"ipv4:{socket.inet_ntop(socket.AF_INET, addr)}:{port}"
    return f"ipv6:[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"
