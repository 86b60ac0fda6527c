"""Several cloud replicas: calls spread over all of them, and one killed mid-run costs no request.

Three real ``cloud-server`` processes on loopback; the edge's client gets their addresses as one
list (``protos.targets``: round robin). Each cloud logs the id of every request it answered, which
is how the spread is counted. Then one replica is killed (SIGKILL) while requests are in flight:
unary calls that fail with UNAVAILABLE are retried by gRPC and picked again, onto the others.
The relay and the proxy tap spread over a list the same way (connections and calls respectively),
shown with fake clouds.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from attacker.tap import TapConfig, TapThread
from edge_client.client import CloudClient
from fixtures_grpc import CloudProcess
from protos.targets import grpc_target
from tap_upstream import FakeCloud, start_fake_cloud

pytestmark = pytest.mark.e2e
DEP = "lenet5-bench--relu2"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from benchmarks.tap_overhead import make_deployments

    root = tmp_path_factory.mktemp("replica-artifacts")
    make_deployments(root, {"lenet5"})
    return root


def answered(cloud: CloudProcess) -> int:
    return sum(1 for e in cloud.events if e.get("event") == "infer")


def feats(i: int) -> np.ndarray:
    return np.random.default_rng(i).random((1, 16, 8, 8), dtype=np.float32)


def run(client: CloudClient, first: int, count: int, window: int = 6, at=None) -> list:
    """Send ``count`` requests, ``window`` in flight; call ``at()`` after half. The errors."""
    errors, inflight = [], []
    for i in range(first, first + count):
        if at is not None and i == first + count // 2:
            at()
        inflight.append(client.infer_future(DEP, feats(i), request_id=f"q{i}"))
        if len(inflight) >= window:
            fut = inflight.pop(0)
            if fut.exception(60) is not None:
                errors.append(fut.exception())
    errors += [f.exception(60) for f in inflight if f.exception(60) is not None]
    return errors


def test_three_replicas_share_the_load_and_one_killed_loses_nothing(artifacts):
    clouds = [CloudProcess(artifacts, "--runtime", "torch") for _ in range(3)]
    try:
        with CloudClient(",".join(c.address for c in clouds), timeout=30) as client:
            client.wait_ready(30)
            assert run(client, 0, 300) == []
            time.sleep(0.5)  # the logs' last lines
            served = [answered(c) for c in clouds]
            assert sum(served) == 300 and min(served) > 60, served  # each over 20%

            killed = clouds[0]
            errors = run(client, 300, 300, at=lambda: killed.proc.send_signal(signal.SIGKILL))
            assert errors == [], errors[:3]
            killed.proc.wait(10)
            time.sleep(0.5)
            after = [answered(c) - s for c, s in zip(clouds[1:], served[1:])]
            assert min(after) > 60, after  # the survivors took the rest between them
            print(f"served by 3 replicas: {served}; after one was killed, the two others: {after}")
    finally:
        for c in clouds:
            c.kill()


def test_addresses_become_one_round_robin_target():
    assert grpc_target("127.0.0.1:1,127.0.0.2:2") == ("ipv4:127.0.0.1:1,127.0.0.2:2",
                                                    [("grpc.lb_policy_name", "round_robin")])
    target, options = grpc_target("cloud:50051")
    assert target == "dns:///cloud:50051" and ("grpc.lb_policy_name", "round_robin") in options
    target, options = grpc_target("localhost:5,127.0.0.1:6")  # a name in a list: resolved, kept as authority
    assert target == "ipv4:127.0.0.1:5,127.0.0.1:6" and ("grpc.default_authority", "localhost:5") in options
    assert grpc_target("[::1]:7,[::1]:8")[0] == "ipv6:[::1]:7,[::1]:8"


@pytest.mark.parametrize("mode", ["passive", "proxy"])
def test_a_tap_spreads_over_a_list_of_upstreams(tmp_path, mode):
    fakes = [FakeCloud() for _ in range(3)]
    servers = [start_fake_cloud(f) for f in fakes]
    upstream = ",".join(f"127.0.0.1:{port}" for _, port in servers)
    try:
        with TapThread(TapConfig(listen="127.0.0.1:0", upstream=upstream, store=str(tmp_path / "s"), mode=mode,
                                 admin="127.0.0.1:0")) as tap:
            # the relay balances connections: six edges with a connection each
            for i in range(6):
                with CloudClient(f"127.0.0.1:{tap.tap.port}", timeout=10, own_connection=True) as client:
                    for j in range(3):
                        assert client.infer("dep-a", feats(i * 3 + j), request_id=f"t{i}-{j}").top1.shape == (1,)
        calls = [sum(1 for s in f.seen if s["method"] == "Infer") for f in fakes]
        assert sum(calls) == 18 and min(calls) >= 3, calls
    finally:
        for server, _ in servers:
            server.stop(0)


def test_a_channel_to_a_list_works_when_a_replica_never_started():
    fake = FakeCloud()
    server, port = start_fake_cloud(fake)
    try:
        with CloudClient(f"127.0.0.1:1,127.0.0.1:{port}", timeout=10) as client:
            for i in range(10):
                client.infer("dep-a", feats(i), request_id=f"d{i}")
        assert sum(1 for s in fake.seen if s["method"] == "Infer") == 10
    finally:
        server.stop(0)


def test_a_sniffer_is_given_one_address(tmp_path):
    tap = TapThread(TapConfig(listen="127.0.0.1:0", upstream="127.0.0.1:1,127.0.0.1:2", store=str(tmp_path / "s"),
                              mode="sniff"))
    with pytest.raises(ValueError, match="one HOST:PORT"):
        tap.start()
    tap.stop()
