"""TLS and mutual TLS on the gRPC hops, and what each tap can still read.

Certificates come from ``deploy/make_certs.sh`` (what ``make certs`` runs) into a temporary folder.
With TLS end to end, the relaying and sniffing taps pass or watch ciphertext: traffic flows, the
connection is counted ``connections_unreadable`` and nothing is recorded. A proxy tap that
terminates TLS with a certificate the edge trusts (the compromised-proxy model) records every call.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from attacker.captures.store import CaptureStore
from attacker.tap import TapConfig, TapThread
from attacker.tap.sniffer import can_sniff
from cloud_server.server import CloudServer, ServerConfig
from edge_client.client import CloudClient, CloudError
from fixtures_grpc import ROOT
from models.errors import SplitlabError
from protos.tls import TlsConfig
from tap_upstream import FakeCloud, logits_for, start_fake_cloud

pytestmark = pytest.mark.e2e
CALLS = 5


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run(["sh", str(ROOT / "deploy" / "make_certs.sh"), str(folder)], check=True, capture_output=True)
    return folder


def edge_tls(certs, client_cert: bool = True) -> TlsConfig:
    pair = {"client_cert": str(certs / "edge.pem"), "client_key": str(certs / "edge.key")} if client_cert else {}
    return TlsConfig(ca=str(certs / "ca.pem"), **pair)


def cloud_tls(certs, mutual: bool = True) -> TlsConfig:
    return TlsConfig(cert=str(certs / "cloud.pem"), key=str(certs / "cloud.key"),
                     client_ca=str(certs / "ca.pem") if mutual else "")


@pytest.fixture()
def tls_cloud(certs):
    """A fake cloud that speaks mutual TLS: (servicer, port)."""
    fake = FakeCloud()
    server, port = start_fake_cloud(fake, credentials=cloud_tls(certs).server_credentials())
    yield fake, port
    server.stop(0)


def feats(i: int) -> np.ndarray:
    return np.random.default_rng(i).random((2, 8, 4, 4), dtype=np.float32)


def send(address: str, tls: TlsConfig) -> None:
    with CloudClient(address, timeout=20, tls=tls) as client:
        for i in range(CALLS):
            result = client.infer("dep-a", feats(i), request_id=f"t-{i}")
            assert np.allclose(result.logits, logits_for(feats(i)))


def test_cloud_server_speaks_mutual_tls_and_refuses_a_client_without_a_certificate(certs, tmp_path, monkeypatch):
    config = ServerConfig(artifacts=str(tmp_path / "artifacts"), host="127.0.0.1", port=0, tls=cloud_tls(certs))
    with CloudServer(config) as server:
        # the container health check (deploy/healthcheck.py) with the cloud's own environment
        spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy" / "healthcheck.py")
        healthcheck = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(healthcheck)
        for name, value in (("SPLITLAB_TLS_CERT", "cloud.pem"), ("SPLITLAB_TLS_KEY", "cloud.key"),
                            ("SPLITLAB_TLS_CLIENT_CA", "ca.pem")):
            monkeypatch.setenv(name, str(certs / value))
        assert healthcheck.main([f"grpcs://{server.address}"]) == 0
        assert healthcheck.main(["--timeout", "2", f"grpc://{server.address}"]) == 1
        assert server.tls_mode == "mutual"
        with CloudClient(f"localhost:{server.port}", timeout=5, tls=edge_tls(certs)) as client:
            assert client.health() == "SERVING" and client.list_deployments() == []
        for tls, hint in ((edge_tls(certs, client_cert=False), "--tls-client-cert"), (None, "--tls-ca")):
            with CloudClient(server.address, timeout=5, retries=False, tls=tls) as client:
                with pytest.raises(CloudError) as err:
                    client.health()
            assert err.value.code.name == "UNAVAILABLE" and hint in str(err.value), str(err.value)


def test_a_missing_certificate_names_the_file_the_flag_and_the_variable(certs, tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(SplitlabError, match=r"nope\.pem.*--tls-cert.*SPLITLAB_TLS_CERT"):
        TlsConfig(cert=missing, key=str(certs / "cloud.key")).server_credentials()
    with pytest.raises(SplitlabError, match="--tls-client-cert needs --tls-client-key"):
        TlsConfig(ca=str(certs / "ca.pem"), client_cert=str(certs / "edge.pem")).channel_credentials()
    cloud = subprocess.run([sys.executable, "-m", "cloud_server", "--artifacts", str(tmp_path), "--port", "0",
                            "--tls-key", str(certs / "cloud.key")], env=dict(os.environ, SPLITLAB_TLS_CERT=missing),
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert cloud.returncode == 1 and missing in cloud.stderr and "--tls-cert" in cloud.stderr, cloud.stderr
    from edge_client.__main__ import main as edge_main

    monkeypatch.setenv("SPLITLAB_TLS_CA", missing)  # the variable is the flag's default
    assert edge_main(["list", "--cloud", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert missing in err and "--tls-ca" in err and "SPLITLAB_TLS_CA" in err


@pytest.mark.parametrize("mode", ["passive", "sniff"])
def test_relaying_and_sniffing_taps_cannot_read_tls(tls_cloud, certs, tmp_path, mode):
    if mode == "sniff" and not can_sniff():
        pytest.skip("sniffing needs CAP_NET_RAW (run the tests as root)")
    fake, port = tls_cloud
    store = tmp_path / "captures"
    with TapThread(TapConfig(listen="127.0.0.1:0", upstream=f"127.0.0.1:{port}", store=str(store), mode=mode,
                             admin="127.0.0.1:0")) as tap:
        tap_port = tap.tap.port
        send(f"127.0.0.1:{port if mode == 'sniff' else tap_port}", edge_tls(certs))
        assert tap.flush(10)
        stats = tap.stats()
    assert len([s for s in fake.seen if s["method"] == "Infer"]) == CALLS  # the traffic flowed
    assert stats["connections_unreadable"] >= 1, stats
    assert stats.get("connections_unparsed", 0) == 0 and stats.get("failed", 0) == 0, stats
    assert CaptureStore(store).count() == 0


def test_a_proxy_tap_the_edge_trusts_terminates_tls_and_records_everything(tls_cloud, certs, tmp_path):
    fake, port = tls_cloud
    store = tmp_path / "captures"
    tap_tls = TlsConfig(cert=str(certs / "attacker.pem"), key=str(certs / "attacker.key"), ca=str(certs / "ca.pem"),
                        client_cert=str(certs / "attacker.pem"), client_key=str(certs / "attacker.key"),
                        server_name="cloud")  # upstream by IP, the cloud's certificate checked by name
    with TapThread(TapConfig(listen="127.0.0.1:0", upstream=f"127.0.0.1:{port}", store=str(store), mode="proxy",
                             tls=tap_tls)) as tap:
        send(f"localhost:{tap.tap.port}", edge_tls(certs, client_cert=False))
        assert tap.flush(10)
    captures = CaptureStore(store).captures()
    assert sorted(c.request_id for c in captures) == [f"t-{i}" for i in range(CALLS)]
    assert len([s for s in fake.seen if s["method"] == "Infer"]) == CALLS


def test_tls_flags_in_a_relaying_mode_are_refused(tmp_path, certs):
    tap = TapThread(TapConfig(listen="127.0.0.1:0", upstream="127.0.0.1:1", store=str(tmp_path / "s"),
                              tls=cloud_tls(certs, mutual=False)))
    with pytest.raises(ValueError, match="--mode proxy"):
        tap.start()
    tap.stop()
