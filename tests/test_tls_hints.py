"""A misconfigured TLS hop says what is likely wrong, on unary calls and on streams (whose requests
only time out, as the stream waits for the connection): a TLS cloud and a plaintext edge, a
plaintext cloud and a TLS edge, a CA that did not sign the cloud's certificate, a name the
certificate does not carry. Certificates from ``deploy/make_certs.sh`` (what ``make certs`` runs)
in temporary folders: two, for two unrelated CAs."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from edge_client.client import CloudClient, CloudError
from fixtures_grpc import ROOT
from protos.tls import TlsConfig
from tap_upstream import FakeCloud, start_fake_cloud

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """Two ``make certs`` folders: ``ours`` (the cloud's) and ``other`` (another CA)."""
    folders = {}
    for name in ("ours", "other"):
        folders[name] = tmp_path_factory.mktemp(f"certs-{name}")
        subprocess.run(["sh", str(ROOT / "deploy" / "make_certs.sh"), str(folders[name])], check=True,
                       capture_output=True)
    return folders


def _server_tls(certs) -> TlsConfig:
    return TlsConfig(cert=str(certs["ours"] / "cloud.pem"), key=str(certs["ours"] / "cloud.key"))


CASES = {  # name -> (the cloud speaks TLS, the edge's TLS config from the certs, words the hint must hold)
    "tls cloud, plaintext edge": (True, lambda c: TlsConfig(), ["turn TLS on here with its CA", "--tls-ca",
                                                                  "SPLITLAB_TLS_CA"]),
    "plaintext cloud, tls edge": (False, lambda c: TlsConfig(ca=str(c["ours"] / "ca.pem")),
                                  ["the server does not speak TLS", "SPLITLAB_TLS_CERT", "leave SPLITLAB_TLS_CA"]),
    "wrong ca": (True, lambda c: TlsConfig(ca=str(c["other"] / "ca.pem")),
                 ["not signed by the CA in " + "{other}/ca.pem", "--tls-ca (SPLITLAB_TLS_CA)"]),
    "wrong name": (True, lambda c: TlsConfig(ca=str(c["ours"] / "ca.pem"), server_name="elsewhere.example"),
                   ["does not carry the name dialled", "--tls-server-name (SPLITLAB_TLS_SERVER_NAME)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_misconfigured_tls_says_what_to_set_on_calls_and_streams(certs, case):
    cloud_tls, edge_tls, words = CASES[case]
    words = [w.replace("{other}", str(certs["other"])) for w in words]
    server, port = start_fake_cloud(FakeCloud(), credentials=_server_tls(certs).server_credentials() if cloud_tls
                                    else None)
    x = np.ones((1, 8, 4, 4), np.float32)
    try:
        with CloudClient(f"127.0.0.1:{port}", timeout=20, retries=False, tls=edge_tls(certs)) as client:
            with pytest.raises(CloudError) as err:
                client.infer("dep-a", x)
            assert err.value.code.name == "UNAVAILABLE"
            assert all(w in err.value.message for w in words), err.value.message
            with client.stream(request_timeout=1.0) as stream:
                with pytest.raises(CloudError) as err:
                    stream.submit("dep-a", x).result(30)
            assert err.value.code.name == "DEADLINE_EXCEEDED"
            assert f"the cloud at 127.0.0.1:{port} is unreachable" in err.value.message
            assert all(w in err.value.message for w in words), err.value.message
    finally:
        server.stop(0)


class SilentCloud(FakeCloud):
    """Takes stream requests and never answers them (until the stream ends)."""

    def InferStream(self, request_iterator, context):
        for _ in request_iterator:
            pass
        return iter(())


def test_a_stream_to_a_healthy_cloud_that_does_not_answer_blames_no_tls(certs):
    server, port = start_fake_cloud(SilentCloud(), credentials=_server_tls(certs).server_credentials())
    try:
        with CloudClient(f"127.0.0.1:{port}", timeout=20, tls=TlsConfig(ca=str(certs["ours"] / "ca.pem"))) as client:
            with client.stream(request_timeout=1.0) as stream:
                with pytest.raises(CloudError) as err:
                    stream.submit("dep-a", np.ones((1, 8, 4, 4), np.float32)).result(30)
        assert err.value.message.startswith("no reply within 1 s") and "unreachable" not in err.value.message
    finally:
        server.stop(0)
