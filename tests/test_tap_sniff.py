"""The sniff tap: records traffic it only sees copies of (AF_PACKET on lo), the edge talks to the cloud.

Needs CAP_NET_RAW (root), as the mode itself does; CI runs as root.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from attacker.tap import sniffer as sniff_module
from attacker.captures.store import CaptureStore
from attacker.tap.sniffer import SniffError, can_sniff, open_packet_socket, port_filter
from attacker.tap import TapConfig, TapThread
from protos import split_inference_pb2 as pb
from protos import wire
from tap_upstream import FakeCloud, logits_for, start_fake_cloud
from test_tap import HEAD, HEAD_FIELDS, request, stream, unary


pytestmark = pytest.mark.skipif(not can_sniff(), reason="sniffing needs CAP_NET_RAW (run the tests as root)")


@pytest.fixture()
def cloud():
    fake = FakeCloud(heads={"dep-a": (HEAD, HEAD_FIELDS)})
    server, port = start_fake_cloud(fake)
    yield port
    server.stop(0)


def _sniff(tmp_path, port, poll_interval: float = 0.001) -> TapThread:
    return TapThread(TapConfig(listen="127.0.0.1:0", upstream=f"127.0.0.1:{port}", store=str(tmp_path / "s"),
                               mode="sniff", interface="lo", admin="127.0.0.1:0", poll_interval=poll_interval))


@pytest.mark.parametrize("poll_interval", [0.001, 0.0], ids=["read-every-ms", "read-on-arrival"])
def test_sniffing_records_direct_traffic_without_being_in_its_path(tmp_path, cloud, poll_interval):
    opts = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
    with _sniff(tmp_path, cloud, poll_interval) as tap:
        sent = {f"u-{i}": request(rid=f"u-{i}", seed=i, shape=(3, 8, 4, 4)) for i in range(3)}
        sent["big"] = request(rid="big", seed=5, shape=(2, 64, 64, 64))  # 2 MiB: many segments
        streamed = [request(rid=f"s-{i}", seed=10 + i) for i in range(3)]
        opts.append(("grpc.use_local_subchannel_pool", 1))  # a connection opened after the tap started
        with grpc.insecure_channel(f"127.0.0.1:{cloud}", options=opts) as ch:  # straight to the cloud
            for rid, req in sent.items():
                assert unary(ch, "Infer", req.SerializeToString())[0] == grpc.StatusCode.OK
            assert stream(ch, [r.SerializeToString() for r in streamed])[0] == grpc.StatusCode.OK
            assert unary(ch, "Infer", request(dep="missing", rid="gone").SerializeToString())[0] == \
                grpc.StatusCode.NOT_FOUND
            unary(ch, "GetHead", pb.GetHeadRequest(deployment_id="dep-a").SerializeToString())
        assert tap.flush(10)
        store = CaptureStore(tmp_path / "s")
        for rid, req in list(sent.items()) + [(r.request_id, r) for r in streamed]:
            (cap,) = store.captures(request_id=rid, with_logits=True)
            expected = wire.decode(req.features)
            assert np.array_equal(store.features(cap), expected)
            assert np.allclose(cap.logits, logits_for(expected)) and cap.status == 0
            assert cap.peer.startswith("ipv4:127.0.0.1:")
        (gone,) = store.captures(request_id="gone")
        assert gone.status == grpc.StatusCode.NOT_FOUND.value[0]
        assert store.head_bytes(store.heads("dep-a")[0].sha256) == HEAD
        stats = tap.stats()
    assert stats["mode"] == "sniff" and stats["connections"] == 1 and stats["packets_seen"] > 10
    assert stats["connections_lost"] == 0 and stats["record_failures"] == 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture()
def netns_cloud():
    """A cloud in its own network namespace, reached over a veth pair: the traffic crosses a real
    Ethernet-like interface (not lo), where this host's requests are outgoing and replies incoming."""
    tag = os.getpid() % 100000
    ns, near, far, net = f"splab-{tag}", f"sva{tag}", f"svb{tag}", f"10.213.{tag % 250}"
    try:
        _ip("netns", "add", ns)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"network namespaces unavailable: {getattr(exc, 'stderr', exc)}")
    proc = None
    try:
        _ip("link", "add", near, "type", "veth", "peer", "name", far)
        _ip("link", "set", far, "netns", ns)
        _ip("addr", "add", f"{net}.1/30", "dev", near)
        _ip("link", "set", near, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", far)
        _ip("netns", "exec", ns, "ip", "link", "set", far, "up")
        tests = Path(__file__).resolve().parent
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]))
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(tests / "tap_upstream.py"),
                                 f"{net}.2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        port = int(proc.stdout.readline())
        yield near, f"{net}.2:{port}"
    finally:
        if proc is not None:
            proc.stdin.close()
            proc.wait(10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", near], capture_output=True)


def test_sniffing_a_real_interface_sees_both_directions_once(tmp_path, netns_cloud):
    interface, address = netns_cloud
    opts = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
    tap = TapThread(TapConfig(listen="127.0.0.1:0", upstream=address, store=str(tmp_path / "s"), mode="sniff",
                              interface=interface, admin="127.0.0.1:0"))
    with tap:
        sent = {f"v-{i}": request(rid=f"v-{i}", seed=20 + i) for i in range(4)}
        sent["v-big"] = request(rid="v-big", seed=30, shape=(2, 64, 64, 64))  # 2 MiB, offloaded segments
        with grpc.insecure_channel(address, options=opts) as ch:
            for req in sent.values():
                assert unary(ch, "Infer", req.SerializeToString())[0] == grpc.StatusCode.OK
        assert tap.flush(10)
        store = CaptureStore(tmp_path / "s")
        for rid, req in sent.items():
            (cap,) = store.captures(request_id=rid, with_logits=True)  # once, not once per direction
            expected = wire.decode(req.features)
            assert np.array_equal(store.features(cap), expected)
            assert np.allclose(cap.logits, logits_for(expected)) and cap.status == 0  # the replies too
        stats = tap.stats()
    assert stats["connections"] == 1 and stats["connections_lost"] == 0 and stats["record_failures"] == 0


def test_a_connection_opened_before_the_tap_is_skipped_and_counted(tmp_path, cloud):
    with grpc.insecure_channel(f"127.0.0.1:{cloud}") as ch:
        assert unary(ch, "Infer", request(rid="before").SerializeToString())[0] == grpc.StatusCode.OK
        with _sniff(tmp_path, cloud) as tap:
            assert unary(ch, "Infer", request(rid="during").SerializeToString())[0] == grpc.StatusCode.OK
            with grpc.insecure_channel(f"127.0.0.1:{cloud}",  # its own TCP connection, not the shared one
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as fresh:
                assert unary(fresh, "Infer", request(rid="fresh").SerializeToString())[0] == grpc.StatusCode.OK
            assert tap.flush(10)
            stats = tap.stats()
    assert stats["connections_unparsed"] == 1
    assert [c.request_id for c in CaptureStore(tmp_path / "s").captures()] == ["fresh"]


def test_a_bad_interface_is_a_clear_error():
    with pytest.raises(SniffError, match="no-such-if0"):
        open_packet_socket("no-such-if0", 50051)


def test_the_filter_jumps_land_on_accept_or_reject():
    prog = port_filter(50051)
    rets = {i for i, (code, *_rest) in enumerate(prog) if code == 0x06}
    assert rets == {len(prog) - 2, len(prog) - 1} and prog[-2][3] > 0 and prog[-1][3] == 0
    for i, (code, jt, jf, _k) in enumerate(prog):
        if code & 0x07 == 0x05:  # a jump: both targets inside the program, forward only
            assert 0 <= jt and 0 <= jf and i + 1 + max(jt, jf) < len(prog)


def _packet6(sport: int, dport: int, seq: int, flags: int, data: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + len(data), 6, 64,
                     socket.inet_pton(socket.AF_INET6, "::1"), socket.inet_pton(socket.AF_INET6, "::1"))
    return b"\0" * 12 + b"\x86\xdd" + ip + tcp + data


def _read_seqs(sock, sent) -> list[int]:
    """The seq numbers of the crafted segments that reached ``sock`` (not the kernel's own replies)."""
    seen = []
    sock.settimeout(0.5)  # the kernel delivers looped-back packets a little later
    try:
        while True:
            pkt = sock.recv(1 << 16)
            tcp = 54 if pkt[12:14] == b"\x86\xdd" else 14 + (pkt[14] & 0x0F) * 4
            seq = struct.unpack_from("!I", pkt, tcp + 4)[0]
            if seq in sent:  # not the RSTs the kernel sends back from the closed port
                seen.append(seq)
    except TimeoutError:
        pass
    finally:
        sock.close()
    return sorted(seen)


def test_the_kernel_filter_keeps_data_and_syn_fin_rst_of_the_upstream_and_drops_pure_acks():
    """Crafted segments injected on lo reach a filtered socket only if they carry data or open or
    close a connection, and (given a host) belong to that address (the kernel runs the filter; seq
    numbers tell the packets apart)."""
    from attacker.tap.sniffer import ACK, FIN, RST, SYN, upstream_address

    port = 50999
    socks = {host: open_packet_socket("lo", port, upstream_address(host))
             for host in ("localhost", "127.0.0.1", "127.0.0.2", "::1")}
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind(("lo", 0))
    cases = {  # seq: (flags, data, kept)
        101: (SYN, b"", True), 102: (ACK, b"", False), 103: (ACK, b"payload", True),
        104: (FIN | ACK, b"", True), 105: (RST, b"", True), 106: (ACK | 0x08, b"", False),
    }
    sent = []
    for seq, (flags, data, _kept) in cases.items():
        for make, base in ((_packet, 0), (_packet6, 1000)):
            for sport, dport in ((40000, port), (port, 40000)):
                out.send(bytes(make(sport, dport, seq + base, flags, data)))
                sent.append(seq + base)
        out.send(bytes(_packet(40000, port + 1, seq + 5000, flags, b"x")))  # another port: never kept
    for seq, (sport, dport) in ((7001, (40000, port)), (7002, (port, 40000))):  # another address
        out.send(bytes(_packet(sport, dport, seq, ACK, b"data", addr="127.0.0.2")))
        sent.append(seq)
    out.close()
    seen = {host: _read_seqs(sock, sent) for host, sock in socks.items()}
    v4 = [s for seq, (_f, _d, kept) in cases.items() if kept for s in (seq, seq)]
    v6 = [s + 1000 for s in v4]
    assert seen["localhost"] == sorted(v4 + v6 + [7001, 7002])  # a name: any address with that port
    assert seen["127.0.0.1"] == sorted(v4)
    assert seen["127.0.0.2"] == [7001, 7002]
    assert seen["::1"] == sorted(v6)


def _packet(sport: int, dport: int, seq: int, flags: int, data: bytes = b"", addr: str = "127.0.0.1") -> memoryview:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(data), 0, 0, 64, 6, 0,
                     socket.inet_aton(addr), socket.inet_aton(addr))
    return memoryview(b"\0" * 12 + b"\x08\x00" + ip + tcp + data)


class _Collect:
    def __init__(self):
        self.events = []

    def opened(self, conn, peer):
        self.events.append(("open", conn, peer))

    def chunk(self, conn, from_client, data):
        self.events.append(("data", from_client, bytes(data)))

    def closed(self, conn):
        self.events.append(("close", conn))


def _stream(events, from_client: bool) -> bytes:
    return b"".join(e[2] for e in events if e[0] == "data" and e[1] == from_client)


def test_segments_out_of_order_or_repeated_are_put_back_in_order():
    from attacker.tap.sniffer import ACK, FIN, SYN, Sniffer

    out = _Collect()
    sniffer = Sniffer("lo", 50051, out)  # fed by hand: no socket needed
    sniffer._segment(_packet(40000, 50051, 999, SYN))
    sniffer._segment(_packet(50051, 40000, 4999, SYN | ACK))
    sniffer._segment(_packet(40000, 50051, 1000, ACK, b"abc"))
    sniffer._segment(_packet(40000, 50051, 1009, ACK, b"jkl"))      # early: waits for 1003
    sniffer._segment(_packet(40000, 50051, 1006, ACK, b"ghi"))      # early too
    sniffer._segment(_packet(50051, 40000, 5000, ACK, b"reply"))
    sniffer._segment(_packet(40000, 50051, 1001, ACK, b"bcdef"))    # overlaps what was delivered, fills the gap
    sniffer._segment(_packet(40000, 50051, 1000, ACK, b"abc"))      # a retransmission
    sniffer._segment(_packet(40000, 50051, 1012, FIN | ACK))
    sniffer._segment(_packet(50051, 40000, 5005, FIN | ACK))
    assert _stream(out.events, True) == b"abcdefghijkl" and _stream(out.events, False) == b"reply"
    assert out.events[0][:2] == ("open", 1) and out.events[-1] == ("close", 1)
    assert sniffer.counts["connections_lost"] == 0 and not sniffer.conns


def test_a_gap_that_never_fills_ends_the_recording_of_that_connection(monkeypatch):
    mod = sniff_module

    monkeypatch.setattr(mod, "MAX_AHEAD", 10)
    out = _Collect()
    sniffer = mod.Sniffer("lo", 50051, out)
    sniffer._segment(_packet(40001, 50051, 0, mod.SYN))
    sniffer._segment(_packet(40001, 50051, 100, mod.ACK, b"x" * 8))   # 99 bytes missing before it
    assert sniffer.counts["connections_lost"] == 0                     # could still be reordering
    sniffer._segment(_packet(40001, 50051, 108, mod.ACK, b"y" * 8))   # too much waiting: a loss
    sniffer._segment(_packet(40001, 50051, 1, mod.ACK, b"late"))      # nothing more is delivered
    assert sniffer.counts["connections_lost"] == 1
    assert _stream(out.events, True) == b"" and out.events[-1] == ("close", 1)


def test_the_cli_names_a_bad_interface_and_exits_2(tmp_path, capsys):
    from attacker.__main__ import main

    code = main(["tap", "--mode", "sniff", "--interface", "no-such-if0", "--upstream", "127.0.0.1:1",
                 "--admin", "127.0.0.1:0", "--store", str(tmp_path / "s")])
    assert code == 2 and "cannot sniff on interface 'no-such-if0'" in capsys.readouterr().err


def test_the_cli_refuses_a_poll_interval_out_of_range(tmp_path, capsys):
    from attacker.__main__ import main

    code = main(["tap", "--mode", "sniff", "--poll-ms", "-1", "--upstream", "127.0.0.1:1",
                 "--store", str(tmp_path / "s")])
    assert code == 2 and "--poll-ms must be 0 to 1000, got -1" in capsys.readouterr().err


def _falls_asleep(sniffer, within: float = 5.0) -> bool:
    """The clock stops QUIET_AFTER seconds after the last packet; on a loaded machine the sniffer's
    thread may run that check late, so wait for it (bounded) instead of for a fixed time."""
    deadline = time.monotonic() + within
    time.sleep(sniff_module.QUIET_AFTER)
    while sniffer._tick is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    return sniffer._tick is None


def test_an_idle_sniffer_stops_its_clock_and_the_next_packet_wakes_it(tmp_path, cloud):
    with _sniff(tmp_path, cloud) as tap:
        sniffer = tap.tap._relay
        assert _falls_asleep(sniffer)  # asleep until a packet comes: no CPU while nothing flows
        with grpc.insecure_channel(f"127.0.0.1:{cloud}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            assert unary(ch, "Infer", request(rid="wake").SerializeToString())[0] == grpc.StatusCode.OK
        assert tap.flush(10)  # recorded: the first packet woke the sleeping sniffer
        assert [c.request_id for c in CaptureStore(tmp_path / "s").captures()] == ["wake"]
        assert _falls_asleep(sniffer)
