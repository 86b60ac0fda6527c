"""Container health check for the splitlab services (gRPC health and HTTP ``/healthz``).

    python healthcheck.py [--timeout SECONDS] [TARGET ...]

A TARGET is one of

    grpc://HOST:PORT            the standard grpc.health.v1 service, overall server health ("")
    grpc://HOST:PORT/SERVICE    ... the health of one service, e.g. splitlab.v1.SplitInference
    grpcs://HOST:PORT[/SERVICE] the same over TLS (a service started with --tls-cert): trusts
                                $SPLITLAB_TLS_CA, else $SPLITLAB_TLS_CLIENT_CA (a server checking
                                itself), and presents $SPLITLAB_TLS_CLIENT_CERT/_KEY, else the
                                server's own $SPLITLAB_TLS_CERT/_KEY, to a server that requires one
    http://HOST:PORT/PATH       an HTTP GET that must answer 2xx (https:// too)

Without targets it reads them, space-separated, from ``$SPLITLAB_HEALTHCHECK`` (the Dockerfile's
HEALTHCHECK uses that; docker-compose.yml passes each service's targets explicitly). Exit status 0
when every target is healthy, 1 otherwise (with one line per failure on stderr), 2 for a bad
command line: what Docker's HEALTHCHECK expects. It needs only grpcio, grpcio-health-checking and
the standard library, and imports nothing from splitlab.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 3.0


def tls_credentials():
    """Channel credentials for ``grpcs://`` targets, from the service's own SPLITLAB_TLS_* files."""
    import grpc

    def read(*names: str) -> bytes | None:
        for name in names:
            if os.environ.get(name):
                with open(os.environ[name], "rb") as f:
                    return f.read()
        return None

    cert = read("SPLITLAB_TLS_CLIENT_CERT", "SPLITLAB_TLS_CERT")
    key = read("SPLITLAB_TLS_CLIENT_KEY", "SPLITLAB_TLS_KEY")
    return grpc.ssl_channel_credentials(read("SPLITLAB_TLS_CA", "SPLITLAB_TLS_CLIENT_CA"), key, cert)


def check_grpc(address: str, service: str, timeout: float, tls: bool = False) -> str | None:
    """None when ``service`` at ``address`` reports SERVING, else what is wrong."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        channel = grpc.secure_channel(address, tls_credentials()) if tls else grpc.insecure_channel(address)
    except OSError as exc:
        return f"cannot read a TLS file: {exc}"
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_http(url: str, timeout: float) -> str | None:
    """None when GET ``url`` answers 2xx, else what is wrong."""
    request = urllib.request.Request(url, headers={"User-Agent": "splitlab-healthcheck"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/https only)
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"unreachable: {reason}"


def check(target: str, timeout: float) -> str | None:
    parts = urlsplit(target)
    if parts.scheme in ("grpc", "grpcs"):
        if not parts.hostname or not parts.port:
            raise ValueError(f"{target!r}: a gRPC target is grpc://HOST:PORT[/SERVICE] (grpcs:// over TLS)")
        return check_grpc(parts.netloc, parts.path.strip("/"), timeout, tls=parts.scheme == "grpcs")
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"{target!r}: an HTTP target is http://HOST[:PORT]/PATH")
        return check_http(target, timeout)
    raise ValueError(f"{target!r}: a target starts with grpc://, grpcs://, http:// or https://")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="TARGET")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per target (default {DEFAULT_TIMEOUT:g})")
    args = parser.parse_args(argv)
    targets = args.targets or os.environ.get("SPLITLAB_HEALTHCHECK", "").split()
    if not targets:
        parser.error("no TARGET given and $SPLITLAB_HEALTHCHECK is empty")
    failures = 0
    for target in targets:
        try:
            problem = check(target, args.timeout)
        except ValueError as exc:
            parser.error(str(exc))
        if problem:
            failures += 1
            print(f"unhealthy: {target}: {problem}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
