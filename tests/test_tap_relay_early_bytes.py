"""The relay holds what the edge sends before its upstream connection exists.

CPython before 3.11.3 (Debian 12 ships 3.11.2) did not honour ``pause_reading()`` called in
``connection_made``, so the edge's first bytes reached the relay while it was still connecting to
the cloud (slowly, when the upstream is a host name to resolve) and every connection failed. These
tests reproduce that on any Python: the pause is undone right after ``connection_made`` and the
upstream connection is delayed, and the bytes must still arrive, complete and in order.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import grpc
import numpy as np
import pytest

from attacker.tap import relay as passive
from attacker.tap.relay import Relay
from protos import split_inference_pb2 as pb
from protos import wire
from tap_upstream import FakeCloud, logits_for, start_fake_cloud

CONNECT_DELAY = 0.3


@pytest.fixture
def unpaused_slow_relay(monkeypatch):
    """A relay on a running loop whose client side reads at once and whose upstream connects late."""
    made, connect = passive._Client.connection_made, passive._Client._connect

    def connection_made(self, transport):
        made(self, transport)
        transport.resume_reading()  # what asyncio before 3.11.3 effectively did

    async def slow_connect(self):
        await asyncio.sleep(CONNECT_DELAY)
        await connect(self)

    monkeypatch.setattr(passive._Client, "connection_made", connection_made)
    monkeypatch.setattr(passive._Client, "_connect", slow_connect)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    relays = []

    def start(upstream: str) -> int:
        relay = Relay("127.0.0.1:0", upstream)
        relays.append(relay)
        return asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)

    yield start
    for relay in relays:
        asyncio.run_coroutine_threadsafe(relay.stop(0.2), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_grpc_calls_pass_when_the_upstream_connects_late(unpaused_slow_relay):
    server, port = start_fake_cloud(FakeCloud())
    try:
        relay_port = unpaused_slow_relay(f"localhost:{port}")  # a host name, as in compose
        rng = np.random.default_rng(0)
        with grpc.insecure_channel(f"127.0.0.1:{relay_port}") as channel:
            infer = channel.unary_unary("/splitlab.v1.SplitInference/Infer")
            for i in range(20):
                features = rng.random((2, 64, 8, 8), dtype=np.float32)
                req = pb.InferRequest(deployment_id="dep", request_id=f"r{i}")
                wire.encode_into(req.features, features)
                reply = pb.InferReply.FromString(infer(req.SerializeToString(), timeout=10))
                assert reply.request_id == f"r{i}"
                np.testing.assert_allclose(wire.decode(reply.logits), logits_for(features), rtol=1e-5)
    finally:
        server.stop(0)


def test_early_bytes_and_eof_reach_the_upstream_in_order(unpaused_slow_relay):
    """Raw TCP: everything sent (and the half-close) before the upstream exists arrives intact."""
    listener = socket.create_server(("127.0.0.1", 0))
    received = bytearray()

    def upstream():
        conn, _ = listener.accept()
        with conn:
            while chunk := conn.recv(65536):  # until the relayed EOF
                received.extend(chunk)
            conn.sendall(b"got %d" % len(received))

    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    relay_port = unpaused_slow_relay(f"127.0.0.1:{listener.getsockname()[1]}")
    payload = bytes(range(256)) * 1024  # 256 KiB, all sent before the upstream connects
    with socket.create_connection(("127.0.0.1", relay_port), timeout=10) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(1024):
            answer += chunk
    thread.join(10)
    listener.close()
    assert bytes(received) == payload
    assert answer == b"got %d" % len(payload)
