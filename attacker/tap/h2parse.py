"""Passive HTTP/2 + gRPC decoding: turn the two byte streams of a TCP connection into gRPC calls.

The passive tap (:mod:`attacker.tap.relay`) copies bytes between the edge and the cloud untouched
and feeds a copy of each direction to a :class:`GrpcConnection`, which parses HTTP/2 frames,
decodes header blocks with HPACK (one decoder per direction, as the endpoints do), splits DATA into
length-prefixed gRPC messages (gzip/deflate-compressed ones are inflated) and reports what the
recorder needs through a callback ``emit(kind, *payload)`` with the same events the gRPC proxy
produces: ``infer``, ``stream_request``, ``stream_reply``, ``stream_end``, ``head``,
``deployments``. Only the splitlab methods are reassembled; other streams (health, reflection)
are parsed just enough to keep HPACK in step.

A connection whose bytes cannot be parsed (a gap after a dropped chunk, a protocol this parser does
not speak, TLS) is marked broken and ignored from then on; the forwarder is never affected.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from urllib.parse import unquote

from hpack import Decoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SERVICE = "/splitlab.v1.SplitInference/"
INFER, INFER_STREAM = SERVICE + "Infer", SERVICE + "InferStream"
GET_HEAD, LIST_DEPLOYMENTS = SERVICE + "GetHead", SERVICE + "ListDeployments"
RECORDED = {INFER, INFER_STREAM, GET_HEAD, LIST_DEPLOYMENTS}

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
CANCELLED, UNKNOWN, INTERNAL = 1, 2, 13


class ParseError(Exception):
    """The byte stream is not HTTP/2 as expected; the connection stops being recorded."""


class Encrypted(ParseError):
    """The client opened with a TLS handshake: the connection is encrypted, not a parse failure.
    What a network eavesdropper gets from an edge that uses TLS; counted, not logged as an error."""


TLS_HANDSHAKE = 0x16  # a TLS record of type handshake (the ClientHello), then version 3.x


def is_tls(first: bytes) -> bool:
    return len(first) >= 2 and first[0] == TLS_HANDSHAKE and first[1] == 3


class _Direction:
    """Frames of one direction of the connection; header blocks decoded in order.

    DATA payloads are streamed: each piece of a DATA frame is reported as soon as its bytes arrive,
    as a memoryview into the received chunk (no copy), so a large frame spanning many chunks is
    never buffered here; only frame headers and other (small) frames that straddle two chunks are.
    """

    def __init__(self, client: bool, max_message: int):
        self.buf = bytearray()
        self.need_preface = client
        self.hpack = Decoder()
        self.hpack.max_allowed_table_size = 1 << 20  # accept whatever table size the endpoints agree on
        self.hpack.max_header_list_size = 1 << 24
        self.block: tuple[int, int, bytearray] | None = None  # (stream, flags, fragments) awaiting CONTINUATION
        self.max_frame = max_message + (1 << 20)
        # the DATA frame being streamed: bytes left, stream, flags, trailing padding (None: unknown yet)
        self.data_left = 0
        self.data_stream = 0
        self.data_flags = 0
        self.data_pad: int | None = 0

    def feed(self, data: bytes) -> list:
        """The frames (and DATA pieces) completed by ``data``, as ``(type, stream_id, flags, payload)``.

        ``data`` must be immutable (bytes): payloads may be memoryviews into it.
        """
        view = memoryview(data)
        frames: list = []
        if self.need_preface:
            take = min(len(PREFACE) - len(self.buf), len(view))
            self.buf += view[:take]
            view = view[take:]
            if is_tls(self.buf):
                raise Encrypted("the client opened with a TLS handshake (encrypted, unreadable)")
            if len(self.buf) < len(PREFACE):
                return frames
            if bytes(self.buf) != PREFACE:
                raise ParseError("the client did not open with the HTTP/2 preface (not h2c gRPC?)")
            self.buf = bytearray()
            self.need_preface = False
        buf = self.buf
        while len(view):
            if self.data_left:
                view = self._data_piece(view, frames)
                continue
            if buf or len(view) < 9:  # a frame header (or a small frame) straddling chunks
                if len(buf) < 9:
                    take = min(9 - len(buf), len(view))
                    buf += view[:take]
                    view = view[take:]
                    if len(buf) < 9:
                        break
                    if buf[3] == DATA:
                        self._start_data(buf)
                        buf.clear()
                        continue
                total = 9 + self._length(buf)
                take = min(total - len(buf), len(view))
                buf += view[:take]
                view = view[take:]
                if len(buf) == total:
                    frame = bytes(buf)
                    buf.clear()
                    self._one(memoryview(frame), frames)
                continue
            length = self._length(view)
            if view[3] == DATA:
                self._start_data(view[:9])
                view = view[9:]
                continue
            if len(view) < 9 + length:
                buf += view
                break
            self._one(view[:9 + length], frames)
            view = view[9 + length:]
        return frames

    def _length(self, header) -> int:
        length = int.from_bytes(header[:3], "big")
        if length > self.max_frame:
            raise ParseError(f"frame of {length} bytes is larger than any allowed message")
        return length

    def _start_data(self, header) -> None:
        if self.block is not None:
            raise ParseError("a header block was interrupted by another frame")
        self.data_left = self._length(header)
        self.data_flags = header[4]
        self.data_stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        self.data_pad = None if self.data_flags & PADDED else 0

    def _data_piece(self, view: memoryview, frames: list) -> memoryview:
        """Report the next piece of the DATA frame being streamed; return the rest of ``view``."""
        if self.data_pad is None:  # PADDED: the first byte is the padding length
            self.data_pad = view[0]
            self.data_left -= 1
            view = view[1:]
            if self.data_pad > self.data_left:
                raise ParseError("DATA padding longer than the frame")
            if not len(view) and self.data_left:
                return view
        take = min(self.data_left, len(view))
        content = max(0, min(take, self.data_left - self.data_pad))
        if content:
            frames.append((DATA, self.data_stream, self.data_flags, view[:content]))
        self.data_left -= take
        return view[take:]

    def _one(self, frame: memoryview, frames: list) -> None:
        """Parse one complete non-DATA frame."""
        ftype, flags = frame[3], frame[4]
        stream = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        parsed = self._frame(ftype, flags, stream, frame[9:])
        if parsed is not None:
            frames.append(parsed)

    def _frame(self, ftype, flags, stream, payload: memoryview):
        if self.block is not None and ftype != CONTINUATION:
            raise ParseError("a header block was interrupted by another frame")
        if ftype in (HEADERS, PUSH_PROMISE):
            start = 0
            pad = 0
            if flags & PADDED:
                pad = payload[0]
                start = 1
            if ftype == HEADERS and flags & PRIORITY_FLAG:
                start += 5
            if ftype == PUSH_PROMISE:
                start += 4
            fragment = payload[start:len(payload) - pad]
            if flags & END_HEADERS:
                return self._headers(ftype, stream, flags, bytes(fragment))
            self.block = (stream, flags | (0x100 if ftype == PUSH_PROMISE else 0), bytearray(fragment))
            return None
        if ftype == CONTINUATION:
            if self.block is None or self.block[0] != stream:
                raise ParseError("CONTINUATION without an open header block")
            self.block[2].extend(payload)
            if flags & END_HEADERS:
                s, f, block = self.block
                self.block = None
                return self._headers(PUSH_PROMISE if f & 0x100 else HEADERS, s, f & 0xFF, bytes(block))
            return None
        if ftype == RST_STREAM:
            return RST_STREAM, stream, flags, bytes(payload[:4])
        return None  # SETTINGS, PING, WINDOW_UPDATE, GOAWAY, PRIORITY: nothing to record

    def _headers(self, ftype, stream, flags, block: bytes):
        try:
            headers = self.hpack.decode(block, raw=True)
        except Exception as exc:  # hpack raises several types
            raise ParseError(f"HPACK decoding failed: {exc}") from exc
        if ftype == PUSH_PROMISE:
            return None
        return HEADERS, stream, flags, {k.decode("latin-1"): v for k, v in headers}


@dataclass
class _Call:
    path: str
    start: float
    request_id: str = ""
    encoding: str = ""
    reply_encoding: str = ""
    sid: str = ""
    requests: list = field(default_factory=list)
    replies: list = field(default_factory=list)
    up: "_Messages" = field(default_factory=lambda: _Messages())
    down: "_Messages" = field(default_factory=lambda: _Messages())
    done: bool = False


class _Messages:
    """Reassembles length-prefixed gRPC messages from DATA payloads with one join per message."""

    __slots__ = ("parts", "have", "need")

    def __init__(self):
        self.parts: list[bytes] = []
        self.have = 0
        self.need: tuple[int, int] | None = None


class GrpcConnection:
    """Both directions of one edge-cloud connection; ``emit`` receives the recorder's events."""

    def __init__(self, conn_id: str, peer: str, emit, max_message: int = 64 << 20, counts=None):
        self.conn_id, self.peer, self.emit = conn_id, peer, emit
        self.counts = counts if counts is not None else {}  # calls seen per method name
        self.max_message = max_message
        self.up = _Direction(True, max_message)
        self.down = _Direction(False, max_message)
        self.calls: dict[int, _Call] = {}
        self.broken: str = ""

    def feed(self, upstream: bool, data: bytes, when: float) -> None:
        """Bytes seen from the client (``upstream=True``) or from the server, at time ``when``."""
        if self.broken:
            return
        try:
            for ftype, stream, flags, payload in (self.up if upstream else self.down).feed(data):
                if upstream:
                    self._client_frame(ftype, stream, flags, payload, when)
                else:
                    self._server_frame(ftype, stream, flags, payload, when)
        except ParseError as exc:
            self.broken = str(exc)
            raise

    def close(self, when: float) -> None:
        """The TCP connection ended: calls still open end as UNKNOWN (the reply was not seen)."""
        for call in list(self.calls.values()):
            self._finish(call, UNKNOWN, "connection closed before the call ended", when)
        self.calls.clear()

    # --- client -> server ------------------------------------------------------------------------
    def _client_frame(self, ftype, stream, flags, payload, when):
        if ftype == HEADERS:
            if stream in self.calls:
                return  # trailers from a client: not used by gRPC
            path = _text(payload.get(":path", b""))
            method = path.rsplit("/", 1)[-1]
            self.counts[method] = self.counts.get(method, 0) + 1
            if path not in RECORDED:
                self.calls[stream] = _Call(path, when, done=True)  # tracked only to ignore its DATA
                return
            self.calls[stream] = _Call(path, when, _text(payload.get("x-request-id", b"")),
                                       _text(payload.get("grpc-encoding", b"")), sid=f"{self.conn_id}/{stream}")
        elif ftype == DATA:
            call = self.calls.get(stream)
            if call is None or call.done:
                return
            for message in self._messages(call.up, payload, call.encoding):
                if call.path == INFER_STREAM:
                    self.emit("stream_request", call.sid, self.peer, when, message, call.request_id)
                else:
                    call.requests.append(message)
        elif ftype == RST_STREAM:
            call = self.calls.pop(stream, None)
            if call is not None:
                self._finish(call, CANCELLED, "cancelled by the client", when)

    # --- server -> client ------------------------------------------------------------------------
    def _server_frame(self, ftype, stream, flags, payload, when):
        call = self.calls.get(stream)
        if call is None:
            return
        if ftype == HEADERS:
            if "grpc-encoding" in payload:
                call.reply_encoding = _text(payload["grpc-encoding"])
            if "grpc-status" in payload or flags & END_STREAM:
                self.calls.pop(stream, None)
                status = payload.get("grpc-status")
                try:
                    code = int(status) if status is not None else UNKNOWN
                except ValueError:
                    code = UNKNOWN
                self._finish(call, code, unquote(_text(payload.get("grpc-message", b""))), when)
        elif ftype == DATA:
            if call.done:
                return
            for message in self._messages(call.down, payload, call.reply_encoding):
                if call.path == INFER_STREAM:
                    self.emit("stream_reply", call.sid, when, message)
                else:
                    call.replies.append(message)
        elif ftype == RST_STREAM:
            self.calls.pop(stream, None)
            self._finish(call, CANCELLED, "stream reset by the server", when)

    def _finish(self, call: _Call, code: int, details: str, when: float) -> None:
        if call.done:
            return
        call.done = True
        if call.path == INFER_STREAM:
            self.emit("stream_end", call.sid, when, code, details)
        elif call.path == INFER:
            if call.requests:
                self.emit("infer", self.peer, call.start, when, call.requests[0],
                          call.replies[0] if (code == 0 and call.replies) else None, code, details, call.request_id)
        elif code == 0 and call.replies:
            if call.path == GET_HEAD:
                self.emit("head", self.peer, call.start, call.replies[0])
            elif call.path == LIST_DEPLOYMENTS:
                self.emit("deployments", call.start, call.replies[0])

    def _messages(self, st: _Messages, data: bytes, encoding: str) -> list[bytes]:
        """Complete gRPC messages (5-byte prefix: compressed flag, big-endian length) so far."""
        if len(data):
            st.parts.append(data)
            st.have += len(data)
        out = []
        while True:
            if st.need is None:
                if st.have < 5:
                    break
                if len(st.parts[0]) < 5:
                    st.parts = [memoryview(b"".join(st.parts))]
                head = st.parts[0]
                st.need = (head[0], int.from_bytes(head[1:5], "big"))
                if st.need[1] > self.max_message:
                    raise ParseError(f"a gRPC message of {st.need[1]} bytes exceeds the recording limit")
            compressed, length = st.need
            if st.have < 5 + length:
                break
            blob = st.parts[0] if len(st.parts) == 1 else memoryview(b"".join(st.parts))
            message = blob[5:5 + length]  # a view into the DATA payload when it held the whole message
            rest = blob[5 + length:]
            st.parts = [rest] if len(rest) else []
            st.have = len(rest)
            st.need = None
            out.append(_inflate(message, encoding) if compressed else message)
        return out


def _inflate(message, encoding: str) -> bytes:
    if encoding == "gzip":
        return zlib.decompress(message, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(message)
    raise ParseError(f"compressed gRPC message with unsupported grpc-encoding {encoding!r}")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
