"""Where a client's calls go when the cloud has several replicas.

Why: gRPC's default load-balancing policy, ``pick_first``, connects to the first address a name
resolves to and sends everything there, so ``--scale cloud=3`` behind the name ``cloud`` served
everything from one replica. Channels built here use ``round_robin``: one connection to every
address, calls spread over the ready ones, and a unary call retried on UNAVAILABLE is picked
again, so it lands on another replica when one dies. A stream stays on the replica it started on.

An address is ``HOST:PORT`` (a name resolves through DNS to every address it has: ``dns:///``) or a
comma-separated list ``HOST:PORT,HOST:PORT`` (IP literals become one ``ipv4:``/``ipv6:`` URI; names
are resolved once, when the channel is made). A string that already has a scheme (``dns:``,
``ipv4:``, ``unix:``) is passed through.
"""

from __future__ import annotations

import ipaddress
import socket

from models.errors import SplitlabError

LB_OPTIONS = [("grpc.lb_policy_name", "round_robin")]


def split_hostport(address: str) -> tuple[str, int]:
    """``("host", port)`` of ``host:port`` or ``[v6]:port``, with a clear error otherwise."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SplitlabError(f"an address must be HOST:PORT, got {address!r}")
    return host.strip("[]") or "localhost", int(port)


def addresses(address: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` pairs of a comma-separated list."""
    parts = [p for p in address.split(",") if p.strip()]
    if not parts:
        raise SplitlabError(f"no address in {address!r}")
    return [split_hostport(p) for p in parts]


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def grpc_target(address: str) -> tuple[str, list]:
    """(gRPC target URI, channel options) for ``address``: round robin over all its addresses.

    A list with names in it is resolved here (gRPC has no URI for several names); the first name
    stays the channel's authority, so TLS checks the certificate against it.
    """
    if "://" in address or address.split(":", 1)[0] in ("dns", "ipv4", "ipv6", "unix", "unix-abstract"):
        return address, list(LB_OPTIONS)
    pairs = addresses(address)
    if len(pairs) == 1:
        host, port = pairs[0]
        return f"dns:///{_join(host, port)}", list(LB_OPTIONS)
    options = list(LB_OPTIONS)
    named = [h for h, _ in pairs if _ip_version(h) is None]
    if named:
        options.append(("grpc.default_authority", _join(*pairs[0])))
    resolved: list[tuple[str, int]] = []
    for host, port in pairs:
        if _ip_version(host) is not None:
            resolved.append((host, port))
            continue
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise SplitlabError(f"cannot resolve {host!r} in the address list {address!r}: {exc}") from None
        resolved += sorted({(info[4][0], port) for info in infos})
    versions = {_ip_version(h) for h, _ in resolved}
    if len(versions) > 1:  # gRPC's ipv4:/ipv6: schemes take one family each
        resolved = [(h, p) for h, p in resolved if _ip_version(h) == 4]
    scheme = "ipv6" if versions == {6} else "ipv4"
    return f"{scheme}:" + ",".join(_join(h, p) for h, p in dict.fromkeys(resolved)), options


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if _ip_version(host) == 6 else f"{host}:{port}"


def open_channel(address: str, options: list, tls=None, use_aio: bool = False):
    """A channel to ``address`` (round robin over all of it) with ``options``: TLS when ``tls`` (a
    :class:`protos.tls.TlsConfig`) has client settings, plaintext otherwise; grpc-aio's with
    ``use_aio``."""
    import grpc
    from grpc import aio

    target, lb_options = grpc_target(address)
    options = list(options) + lb_options + (tls.channel_options() if tls is not None else [])
    credentials = tls.channel_credentials() if tls is not None else None
    module = aio if use_aio else grpc
    if credentials is None:
        return module.insecure_channel(target, options=options)
    return module.secure_channel(target, credentials, options=options)
