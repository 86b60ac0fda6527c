"""The passive decoder gives the same calls however the TCP byte stream is cut into chunks."""

from __future__ import annotations

import asyncio
import random
import threading

import grpc
import numpy as np
import pytest

from attacker.tap.h2parse import GrpcConnection, ParseError
from attacker.tap.relay import Relay
from protos import split_inference_pb2 as pb
from protos import wire
from tap_upstream import FakeCloud, start_fake_cloud

SVC = "/splitlab.v1.SplitInference/"


class Sink:
    def __init__(self):
        self.chunks: list[tuple[int, bool, bytes]] = []

    def opened(self, conn, peer):
        pass

    def chunk(self, conn, upstream, data):
        self.chunks.append((conn, upstream, bytes(data)))

    def closed(self, conn):
        pass


@pytest.fixture(scope="module")
def recorded():
    """The raw bytes of a session with unary calls, a stream, an error, a head download, health."""
    server, port = start_fake_cloud(FakeCloud(heads={"dep": (b"\x01onnx" * 3000, {"split": "conv1"})}))
    sink = Sink()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    relay = Relay("127.0.0.1:0", f"127.0.0.1:{port}", sink)
    relay_port = asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)
    requests = []
    with grpc.insecure_channel(f"127.0.0.1:{relay_port}") as ch:
        infer = ch.unary_unary(SVC + "Infer")
        for i, shape in enumerate([(1, 4), (3, 64, 32, 32), (2, 8, 8, 8)]):  # 768 KiB spans many frames
            req = pb.InferRequest(deployment_id="dep", request_id=f"u{i}")
            wire.encode_into(req.features, np.random.default_rng(i).random(shape, dtype=np.float32))
            requests.append(req)
            infer(req.SerializeToString(), metadata=[("x-request-id", f"u{i}")])
        bad = pb.InferRequest(deployment_id="missing", request_id="nf")
        wire.encode_into(bad.features, np.zeros((1, 2), np.float32))
        with pytest.raises(grpc.RpcError):
            infer(bad.SerializeToString())
        streamed = [pb.InferRequest(deployment_id="dep", request_id=f"s{i}") for i in range(3)]
        for r in streamed:
            wire.encode_into(r.features, np.ones((1, 16), np.float32))
        list(ch.stream_stream(SVC + "InferStream")(iter([r.SerializeToString() for r in streamed])))
        ch.unary_unary(SVC + "GetHead")(pb.GetHeadRequest(deployment_id="dep").SerializeToString())
        ch.unary_unary("/grpc.health.v1.Health/Check")(b"")
    asyncio.run_coroutine_threadsafe(relay.stop(0.5), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    server.stop(0)
    return sink.chunks, requests


def decode(chunks, cut=None, seed=0):
    events = []
    conns: dict[int, GrpcConnection] = {}
    rng = random.Random(seed)
    for conn, upstream, data in chunks:
        state = conns.setdefault(conn, GrpcConnection(str(conn), "peer", lambda *e: events.append(e)))
        pieces = [data]
        if cut == "bytes":
            pieces = [data[i:i + 1] for i in range(len(data))] if len(data) < 4096 else \
                [data[i:i + 997] for i in range(0, len(data), 997)]
        elif cut == "random":
            pieces, i = [], 0
            while i < len(data):
                n = rng.randint(1, 20000)
                pieces.append(data[i:i + n])
                i += n
        for piece in pieces:
            state.feed(upstream, piece, 1.0)
    for state in conns.values():
        state.close(2.0)
    return [tuple(bytes(x) if isinstance(x, memoryview) else x for x in e) for e in events]


def test_decoding_is_independent_of_chunking(recorded):
    chunks, requests = recorded
    whole = decode(chunks)
    kinds = [e[0] for e in whole]
    assert kinds.count("infer") == 4 and kinds.count("stream_request") == 3 and kinds.count("stream_reply") == 3
    assert kinds.count("stream_end") == 1 and kinds.count("head") == 1
    infers = [e for e in whole if e[0] == "infer"]
    for event, req in zip(infers, requests):
        assert pb.InferRequest.FromString(event[4]) == req and event[6] == 0 and event[8] == req.request_id
    assert infers[3][6] == grpc.StatusCode.NOT_FOUND.value[0] and "unknown deployment" in infers[3][7]
    assert decode(chunks, "bytes") == whole
    for seed in range(3):
        assert decode(chunks, "random", seed) == whole


def test_garbage_is_a_parse_error_not_a_crash():
    conn = GrpcConnection("1", "peer", lambda *e: None)
    with pytest.raises(ParseError, match="preface"):
        conn.feed(True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)
    assert conn.broken
    conn.feed(True, b"more", 1.0)  # ignored from then on


def _frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def test_padding_priority_and_continuation_frames():
    """Frames gRPC does not send itself but HTTP/2 allows: padded DATA/HEADERS, PRIORITY, CONTINUATION."""
    from hpack import Encoder

    from attacker.tap.h2parse import PREFACE

    req = pb.InferRequest(deployment_id="dep", request_id="pad-1")
    wire.encode_into(req.features, np.arange(40, dtype=np.float32).reshape(2, 20))
    message = req.SerializeToString()
    grpc_message = b"\x00" + len(message).to_bytes(4, "big") + message
    enc_c, enc_s = Encoder(), Encoder()
    block = enc_c.encode([(":method", "POST"), (":path", SVC + "Infer"), ("x-request-id", "pad-1"),
                          ("content-type", "application/grpc")])
    client = PREFACE + _frame(4, 0, 0, b"")  # SETTINGS
    headers = b"\x03" + b"\x00\x00\x00\x00\x10" + block[:5] + b"pad"  # PADDED | PRIORITY, 3 bytes of padding
    client += _frame(1, 0x8 | 0x20, 1, headers) + _frame(9, 0x4, 1, block[5:])  # CONTINUATION ends it
    half = len(grpc_message) // 2
    client += _frame(0, 0x8, 1, b"\x02" + grpc_message[:half] + b"zz")  # padded DATA
    client += _frame(0, 0x1, 1, grpc_message[half:])
    reply = pb.InferReply(request_id="pad-1")
    reply.top1.extend([1, 2])
    body = reply.SerializeToString()
    server = _frame(1, 0x4, 1, enc_s.encode([(":status", "200")]))
    server += _frame(0, 0, 1, b"\x00" + len(body).to_bytes(4, "big") + body)
    server += _frame(1, 0x4 | 0x1, 1, enc_s.encode([("grpc-status", "0")]))
    for size in (len(client), 7, 1):
        events = []
        conn = GrpcConnection("1", "peer", lambda *e: events.append(e))
        for i in range(0, len(client), size):
            conn.feed(True, client[i:i + size], 1.0)
        for i in range(0, len(server), size):
            conn.feed(False, server[i:i + size], 2.0)
        (event,) = events
        assert event[0] == "infer" and bytes(event[4]) == message and bytes(event[5]) == body
        assert event[6] == 0 and event[8] == "pad-1"
