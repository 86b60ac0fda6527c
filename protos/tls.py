"""Transport security for every gRPC hop (edge -> tap -> cloud, edge -> cloud): TLS and mutual TLS
credentials built from the same flags and ``SPLITLAB_TLS_*`` variables in the cloud, the edge and
the tap.

Why one module: the three services must agree on what each flag means, and a certificate path that
is missing or unreadable must say which file, which flag and which variable, wherever it is given.

What TLS buys in this testbed: a network eavesdropper (the sniff tap, or a passive relay that only
forwards bytes) sees ciphertext and records nothing. What it does not: the cloud decrypts by
definition (a curious cloud sees every feature), and so does a proxy whose certificate the edge
trusts (the compromised-proxy model: the proxy tap terminates TLS and records everything).

Flags (each with its variable):

    --tls-cert / --tls-key     this process's certificate and key as a server (cloud, proxy tap)
    --tls-client-ca            servers: require client certificates signed by this CA (mutual TLS)
    --tls-ca                   clients (edge, tap upstream): trust roots for the server; turns TLS on
    --tls-client-cert / -key   clients: the certificate presented to a server that requires one
    --tls-server-name          clients: the name checked in the server's certificate, when the
                               address is an IP or another name (a relay in between)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from models.env import env_default
from models.errors import SplitlabError

# field -> (flag, environment variable, help)
FLAGS = {
    "cert": ("--tls-cert", "SPLITLAB_TLS_CERT", "server certificate chain (PEM); turns TLS on for the listening side"),
    "key": ("--tls-key", "SPLITLAB_TLS_KEY", "private key of --tls-cert (PEM)"),
    "client_ca": ("--tls-client-ca", "SPLITLAB_TLS_CLIENT_CA",
                  "CA (PEM) that client certificates must be signed by: clients without one are refused (mutual TLS)"),
    "ca": ("--tls-ca", "SPLITLAB_TLS_CA", "CA (PEM) that the server's certificate must be signed by; turns TLS on "
                                          "for the outgoing channel"),
    "client_cert": ("--tls-client-cert", "SPLITLAB_TLS_CLIENT_CERT",
                    "client certificate chain (PEM) for a server that requires one"),
    "client_key": ("--tls-client-key", "SPLITLAB_TLS_CLIENT_KEY", "private key of --tls-client-cert (PEM)"),
    "server_name": ("--tls-server-name", "SPLITLAB_TLS_SERVER_NAME",
                    "name expected in the server's certificate when the address does not carry it (an IP, a "
                    "relay in between)"),
}
SERVER_FIELDS = ("cert", "key", "client_ca")
CLIENT_FIELDS = ("ca", "client_cert", "client_key", "server_name")


@dataclass(frozen=True)
class TlsConfig:
    """Paths (and a name) from flags; empty fields are unset. ``server`` / ``client`` say whether
    each side is on."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""
    ca: str = ""
    client_cert: str = ""
    client_key: str = ""
    server_name: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TlsConfig":
        return cls(**{f.name: getattr(args, f"tls_{f.name}", None) or "" for f in fields(cls)})

    @property
    def server(self) -> bool:
        return bool(self.cert or self.key or self.client_ca)

    @property
    def client(self) -> bool:
        return bool(self.ca or self.client_cert or self.client_key)

    def _read(self, name: str) -> bytes:
        flag, env, _ = FLAGS[name]
        path = getattr(self, name)
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise SplitlabError(f"cannot read the file {path!r} given by {flag} (or {env}): "
                                f"{exc.strerror or exc}") from None

    def _pair(self, cert: str, key: str) -> tuple[bytes, bytes] | None:
        given = [n for n in (cert, key) if getattr(self, n)]
        if not given:
            return None
        if len(given) == 1:
            missing = FLAGS[key if given == [cert] else cert]
            raise SplitlabError(f"{FLAGS[given[0]][0]} needs {missing[0]} (or {missing[1]}) too")
        return self._read(key), self._read(cert)

    def server_credentials(self):
        """``grpc.ServerCredentials`` for the listening side, or None without --tls-cert."""
        import grpc

        if not self.server:
            return None
        pair = self._pair("cert", "key")
        if pair is None:
            raise SplitlabError(f"{FLAGS['client_ca'][0]} needs a server certificate: {FLAGS['cert'][0]} and "
                                f"{FLAGS['key'][0]}")
        roots = self._read("client_ca") if self.client_ca else None
        return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)

    def channel_credentials(self):
        """``grpc.ChannelCredentials`` for the outgoing channel, or None (plaintext) without --tls-ca
        or a client certificate. Without --tls-ca the system's trust roots verify the server."""
        import grpc

        if not self.client:
            return None
        pair = self._pair("client_cert", "client_key")
        return grpc.ssl_channel_credentials(self._read("ca") if self.ca else None,
                                            *(pair if pair else (None, None)))

    def channel_options(self) -> list[tuple[str, str]]:
        """The server-name override, for the outgoing channel's options."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.client and self.server_name else []

    def hint(self, details: str) -> str:
        """What to add to an UNAVAILABLE error's ``details`` when a TLS misconfiguration is the likely
        cause, naming the flags and variables to fix ("" when the details show none).

        What gRPC reports for each (measured with ``make certs`` certificates, grpcio 1.85):

        * plaintext client, TLS server: only "Socket closed" (the server drops the connection);
        * TLS client, plaintext server: "Tls handshake failed ... WRONG_VERSION_NUMBER";
        * the server's certificate not signed by --tls-ca: "... CERTIFICATE_VERIFY_FAILED";
        * the certificate does not carry the name dialled: "Hostname Verification Check failed";
        * mutual TLS refused (no client certificate, or one of another CA): "Socket closed".
        """
        def flags(*names: str) -> str:
            return " / ".join(FLAGS[n][0] for n in names) + " (" + ", ".join(FLAGS[n][1] for n in names) + ")"

        if "WRONG_VERSION_NUMBER" in details:
            return (f" (TLS is on here ({flags('ca')}) but the server does not speak TLS: turn it on at the "
                    f"server with {flags('cert', 'key')}, or leave {FLAGS['ca'][1]} and the other "
                    "SPLITLAB_TLS_* variables of the client unset for plaintext)")
        if "CERTIFICATE_VERIFY_FAILED" in details:
            where = f"the CA in {self.ca}" if self.ca else "the system's trust roots (no --tls-ca given)"
            return (f" (the server's certificate is not signed by {where}: give the CA that signed it with "
                    f"{flags('ca')}; make certs writes it to certs/ca.pem)")
        if "Hostname Verification" in details or "No match found for server name" in details:
            return (f" (the server's certificate does not carry the name dialled: give a name it does with "
                    f"{flags('server_name')})")
        if "Socket closed" not in details and "andshake" not in details:
            return ""
        if not self.client:
            return (f" (the connection was closed at once: if the server speaks TLS, turn TLS on here with its CA: "
                    f"{flags('ca')})")
        if not self.client_cert:
            return (f" (TLS handshake refused: if the server requires mutual TLS, give a client certificate: "
                    f"{flags('client_cert', 'client_key')})")
        return (f" (TLS handshake refused: is the client certificate ({FLAGS['client_cert'][0]}, "
                f"{FLAGS['client_cert'][1]}) signed by the CA the server trusts ({FLAGS['client_ca'][0]} there)?)")

    def check(self) -> "TlsConfig":
        """Read every given file now, so a wrong path fails at start-up with its flag's name."""
        self.server_credentials()
        self.channel_credentials()
        return self


def add_arguments(parser: argparse.ArgumentParser, server: bool = True, client: bool = True,
                  env=env_default, note: str = "") -> None:
    """The TLS flags of a process that listens (``server``), connects (``client``) or both."""
    group = parser.add_argument_group("transport security (TLS; off unless a certificate or CA is given"
                                      + (f"; {note}" if note else "") + ")")
    names = (SERVER_FIELDS if server else ()) + (CLIENT_FIELDS if client else ())
    for name in names:
        flag, var, text = FLAGS[name]
        group.add_argument(flag, dest=f"tls_{name}", default=env(var, ""), metavar="NAME" if name == "server_name"
                           else "PEM", help=f"{text} [{var}]")
