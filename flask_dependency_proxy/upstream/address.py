"""Which addresses the upstream client may connect to besides the upstream itself: the
rule against making the proxy reach internal services (SSRF) through a redirect or a
token realm.

The address rule: a redirect target or realm whose host resolves to a loopback,
private, unique-local, link-local or unspecified address is refused unless the
upstream's own host is in that same class (an on-premise registry on a private network,
or a test upstream on 127.0.0.1). Every resolved address is checked before the request,
and the address actually connected to is checked again before any byte of the answer is
read: a DNS answer that changes between the two (rebinding) can get one request sent,
never its answer used. A redirect goes to ``http`` or ``https`` only.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import requests

from .errors import UpstreamError, UpstreamRefused


def address_class(address: str) -> str:
    """``unspecified``, ``loopback``, ``link-local``, ``private`` (RFC 1918, unique-local
    ``fc00::/7`` and other non-global ranges), or ``public``."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_global and not ip.is_multicast:
        return "public"
    return "private"


class AddressRule:
    """Which addresses a redirect or token realm may lead to: public ones, those in the
    same class as the upstream's own host (resolved once, on first use), and with
    ``allow_private`` private and loopback ones. Link-local addresses (cloud metadata
    services) and unspecified ones only for an upstream in that class itself.

    :param upstream_host: the host name or address of the configured upstream.
    """

    def __init__(self, upstream_host: str, *, allow_private: bool = False) -> None:
        self.upstream_host = upstream_host
        self._extra = frozenset({"private", "loopback"} if allow_private else ())
        self._allowed: frozenset[str] | None = None

    def allowed_classes(self) -> frozenset[str]:
        if self._allowed is None:
            try:
                own = {address_class(a) for a in resolve(self.upstream_host)}
            except UpstreamError:
                # Not cached: try resolving again next time.
                return frozenset({"public"}) | self._extra
            self._allowed = frozenset({"public"} | own) | self._extra
        return self._allowed

    def check(self, host: str) -> None:
        """:raises UpstreamRefused: when any address ``host`` resolves to is refused."""
        for address in resolve(host):
            self.check_address(address, host)

    def check_address(self, address: str, host: str | None = None) -> None:
        kind = address_class(address)
        if kind not in self.allowed_classes():
            raise UpstreamRefused(
                f"refused {host or address}: {address} is a {kind} address and the "
                f"upstream {self.upstream_host} is not"
            )

    def check_redirect(self, url: str) -> None:
        """:raises UpstreamRefused: ``url`` is not ``http``/``https`` with a host, or its
        host resolves to a refused address."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamRefused(f"refused redirect to {url[:200]}")
        self.check(parts.hostname)

    def check_peer(self, response: requests.Response) -> None:
        """Refuse an answer from an address the rule refuses, before reading any of it
        (the response is closed then).

        :raises UpstreamRefused: the connection's address is refused.
        """
        address = _peer_address(response)
        if address is None:
            return
        try:
            self.check_address(address)
        except UpstreamRefused:
            response.close()
            raise


def resolve(host: str) -> list[str]:
    """Every address ``host`` resolves to (itself, for an address).

    :raises UpstreamError: the name does not resolve.
    """
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise UpstreamError(f"cannot resolve {host[:100]}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, with the scheme's default port filled in: what
    credentials and ``Authorization`` are bound to."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _peer_address(response: requests.Response) -> str | None:
    """The IP address the response's connection is connected to, while it is open: from
    urllib3's connection, or (when the server closes after the response, and http.client
    has let go of the connection) from the socket the body is read from."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is None:
        body = getattr(getattr(response.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(body, "raw", None), "_sock", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else None
    except (OSError, AttributeError, IndexError):
        return None
