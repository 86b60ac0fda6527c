"""End to end with the real services: edge -> tap -> cloud, then ``attacker invert`` on the captures.

The cloud server and the edge (``edge_client``) run in-process on loopback; the edge's replies
through the tap equal the direct ones, the tap captures the edge's GetHead payload and features, and
the CLI reconstructs the private digits from them (white-box from the captured head, live with
``--follow``, black-box through the edge's REST endpoint with the features read at the tap).
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from attacker.__main__ import main
from attacker.captures.store import CaptureStore
from attacker.tap import TapConfig, TapThread

pytestmark = pytest.mark.e2e
CONV1 = "lenet5-digits--conv1"


@pytest.fixture(scope="module")
def services(lenet_digits, tmp_path_factory):
    from cloud_server.server import CloudServer, ServerConfig
    from edge_client.client import CloudClient
    from edge_client.edge import Edge
    from edge_client.heads import HeadCache

    tmp = tmp_path_factory.mktemp("e2e")
    cloud = CloudServer(ServerConfig(artifacts=str(lenet_digits.root), host="127.0.0.1", port=0)).start()
    tap = TapThread(TapConfig(listen="127.0.0.1:0", upstream=cloud.address, store=str(tmp / "captures")))
    tap_port = tap.start()
    tapped = Edge(CloudClient(f"127.0.0.1:{tap_port}"), HeadCache(tmp / "edge-cache-tapped"))
    direct = Edge(CloudClient(cloud.address), HeadCache(tmp / "edge-cache-direct"))
    yield {"tap": tap, "tapped": tapped, "direct": direct, "store": tmp / "captures", "artifacts": lenet_digits.root,
           "tmp": tmp}
    tapped.client.close()
    direct.client.close()
    tap.stop()
    cloud.stop(grace=1.0)


@pytest.fixture(scope="module")
def digits():
    from edge_client.edge import preprocess
    from models.datasets import load_dataset

    ds = load_dataset("digits")
    return preprocess(ds.x_test[:12])


def test_edge_gets_the_same_answers_through_the_tap_and_it_records_them(services, digits):
    tapped, direct = services["tapped"], services["direct"]
    for i in range(0, 12, 4):
        a = tapped.infer(CONV1, digits[i:i + 4], request_id=f"e2e-{i}")
        b = direct.infer(CONV1, digits[i:i + 4], request_id=f"e2e-direct-{i}")
        assert np.array_equal(a.logits, b.logits) and np.array_equal(a.top1, b.top1)
    with tapped.client.stream() as s:
        futures = [tapped.infer_future("lenet5-digits--relu2", digits[i:i + 3], f"e2e-s{i}", stream=s)
                   for i in range(0, 12, 3)]
        streamed = [f.result(timeout=30) for f in futures]
    assert [r.request_id for r in streamed] == [f"e2e-s{i}" for i in range(0, 12, 3)]
    assert services["tap"].flush(20)
    store = CaptureStore(services["store"])
    head = store.heads(CONV1)[0]
    assert head.split == "conv1" and head.arch == "lenet5"
    assert (services["artifacts"] / "deployments" / CONV1 / "head.onnx").read_bytes() == store.head_bytes(head.sha256)
    for i in range(0, 12, 4):
        (cap,) = store.captures(request_id=f"e2e-{i}", with_logits=True)
        expected = tapped.features(CONV1, digits[i:i + 4]).features
        assert np.array_equal(store.features(cap), expected) and cap.deployment_id == CONV1
        assert cap.top1 == list(tapped.infer(CONV1, digits[i:i + 4]).top1)
    assert len(store.captures(deployment="lenet5-digits--relu2", ok_only=True)) >= 4
    stats = services["tap"].stats()
    assert stats["record_failures"] == 0 and stats["connections_unparsed"] == 0


def test_invert_whitebox_from_the_captured_head_with_ground_truth(services, digits, tmp_path, capsys):
    store = services["store"]
    np.savez(tmp_path / "gt.npz", request_ids=np.repeat(["e2e-0", "e2e-4"], 4), images=digits[:8])
    assert main(["truth", str(tmp_path / "gt.npz"), "--store", str(store)]) == 0
    caps = CaptureStore(store).captures(request_id="e2e-0") + CaptureStore(store).captures(request_id="e2e-4")
    out_dir = tmp_path / "out"
    code = main(["invert", "--method", "whitebox", "--deployment", CONV1, "--store", str(store), "--out",
                 str(out_dir), "--capture", str(caps[0].id), "--capture", str(caps[1].id), "--param",
                 "iterations=400", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "captured GetHead payload" in out and (out_dir / "batch-0001.png").exists()
    psnr = float(out.split("PSNR ")[1].split(" ")[0])
    assert psnr > 20.0, out
    saved = np.load(out_dir / "batch-0001.npz")
    assert saved["reconstructions"].shape == (8, 1, 28, 28) and list(saved["request_ids"][:1]) == ["e2e-0"]


def test_invert_follow_attacks_new_traffic(services, digits, tmp_path, capsys):
    out_dir = tmp_path / "follow"
    result = {}
    argv = ["invert", "--method", "whitebox", "--deployment", CONV1, "--store", str(services["store"]), "--out",
            str(out_dir), "--follow", "--poll", "0.2", "--max-batches", "1", "--duration", "60", "--param",
            "iterations=50", "--no-progress"]
    worker = threading.Thread(target=lambda: result.setdefault("code", main(argv)))
    worker.start()
    deadline = time.monotonic() + 60
    while "following" not in capsys.readouterr().out and time.monotonic() < deadline:
        time.sleep(0.1)  # (readouterr consumes output; the marker line is printed once fitted)
        if not worker.is_alive():
            break
    services["tapped"].infer(CONV1, digits[:2], request_id="live-1")
    worker.join(90)
    assert not worker.is_alive() and result.get("code") == 0
    assert (out_dir / "batch-0001.png").exists()
    saved = np.load(out_dir / "batch-0001.npz")
    assert list(saved["request_ids"]) == ["live-1", "live-1"]


def test_blackbox_queries_through_the_edge_rest_endpoint_read_at_the_tap(services, tmp_path, capsys):
    import uvicorn

    from edge_client.rest import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(services["tapped"]), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        code = main(["invert", "--method", "blackbox", "--deployment", CONV1, "--store", str(services["store"]),
                     "--out", str(tmp_path / "bb"), "--edge", f"http://127.0.0.1:{port}", "--aux-data",
                     "digits:train:48", "--param", "epochs=2", "--param", "batch_size=16",
                     "--capture", str(CaptureStore(services["store"]).captures(request_id="e2e-8")[0].id),
                     "--no-progress"])
    finally:
        server.should_exit = True
        thread.join(10)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "live queries" in out and (tmp_path / "bb" / "batch-0001.png").exists()
    queries = [c for c in CaptureStore(services["store"]).captures(deployment=CONV1) if c.request_id.startswith("bb-")]
    assert len(queries) >= 48  # every chosen input's features were observed at the tap
