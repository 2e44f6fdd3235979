"""Peer tokens: what lets one host of the fleet read a fetch another host runs.

The peer route (:mod:`..blueprints.peer`) serves a fetch in progress to the other hosts
of the fleet. Its rules live here, beside the tokens it checks: its path below a host's
``PEER_URL``, who may call it (a token signed for the digest, the offset, the host
asked and the host asking, from that host's own address), and the offset it reads from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import time
import typing as t
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeSerializer

from ..oci.digits import ascii_int

#: The peer route, below a host's ``PEER_URL``.
PEER_BLOB_PATH = "/-/dependency_proxy/peer/blobs/"
#: How long a peer request's signed token is good for: it is made right before its request.
PEER_TOKEN_SECONDS = 5
#: How far the clocks of two hosts may drift apart, either way, before their peer tokens
#: are refused (the issuing host dates the token).
PEER_CLOCK_SKEW_SECONDS = 3
#: Longest peer token read; anything longer is refused unread.
_MAX_PEER_TOKEN = 4096
_MAX_OFFSET = 1 << 62
_PEER_SALT = "flask-dependency-proxy.peer-blob"


@dataclasses.dataclass(frozen=True)
class PeerGrant:
    """What a peer token allows: host ``requester`` reads ``digest`` from ``offset`` at
    host ``holder`` (both named by their ``PEER_URL``)."""

    digest: str
    offset: int
    requester: str
    holder: str


class InvalidPeerToken(Exception):
    """The peer token is malformed, signed with no key of ours, expired, or for another
    digest or host."""


class PeerTokens:
    """Signed tokens that let one host of the fleet read a fetch another host runs.

    A token is made right before its one request, so it lives seconds
    (:data:`PEER_TOKEN_SECONDS`, plus :data:`PEER_CLOCK_SKEW_SECONDS` either way, as the
    issuing host's clock dates it). It names the digest, the offset, the host asked and
    the host asking: a token seen on the wire reads nothing else, nowhere else, and only
    from the asking host's own address (the peer route checks that with
    :func:`comes_from`).

    :param secret_keys: ``SECRET_KEY`` first, then ``SECRET_KEY_FALLBACKS``. Tokens are
        signed with ``SECRET_KEY`` and verified with every key, so the hosts of a fleet
        can rotate the secret one at a time, as for registry tokens.
    :param peer_url: this host's ``PEER_URL``.
    """

    def __init__(
        self,
        secret_keys: t.Sequence[str | bytes],
        peer_url: str,
        *,
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        # itsdangerous signs with the last key and verifies with all of them.
        keys = [k.encode() if isinstance(k, str) else k for k in reversed(secret_keys)]
        self._serializer = URLSafeSerializer(keys, salt=_PEER_SALT)
        self.peer_url = peer_url
        self._clock = clock

    def issue(self, holder: str, digest: str, offset: int) -> str:
        """A token for this host to read ``digest`` from ``offset`` at ``holder``."""
        return self._serializer.dumps(
            {"d": digest, "o": offset, "from": self.peer_url, "to": holder, "at": self._clock()}
        )

    def verify(self, token: str, digest: str) -> PeerGrant:
        """The grant of a token sent to this host for ``digest``.

        :raises InvalidPeerToken: saying why, for the log.
        """
        if not token or len(token) > _MAX_PEER_TOKEN:
            raise InvalidPeerToken("malformed token")
        try:
            payload = self._serializer.loads(token)
        except BadSignature:
            raise InvalidPeerToken("bad signature") from None
        fields: dict[str, type | tuple[type, ...]] = {
            "d": str,
            "o": int,
            "from": str,
            "to": str,
            "at": (int, float),
        }
        if not isinstance(payload, dict) or not all(
            isinstance(payload.get(name), kind) and not isinstance(payload.get(name), bool)
            for name, kind in fields.items()
        ):
            raise InvalidPeerToken("malformed payload")
        age = self._clock() - payload["at"]
        if age > PEER_TOKEN_SECONDS + PEER_CLOCK_SKEW_SECONDS:
            raise InvalidPeerToken(f"expired ({age:.1f} s old)")
        if age < -PEER_CLOCK_SKEW_SECONDS:
            raise InvalidPeerToken(
                f"issued {-age:.1f} s in the future: are the hosts' clocks synchronised?"
            )
        if payload["to"] != self.peer_url:
            raise InvalidPeerToken(f"made for another host ({payload['to']})")
        if payload["d"] != digest:
            raise InvalidPeerToken("made for another digest")
        return PeerGrant(
            digest=payload["d"],
            offset=payload["o"],
            requester=payload["from"],
            holder=payload["to"],
        )


def comes_from(peer_url: str, address: str) -> bool:
    """Whether a connection from ``address`` can be the host whose ``PEER_URL`` is
    ``peer_url``: the URL's host is that address, or a name that resolves to it."""
    try:
        remote = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(remote, ipaddress.IPv6Address) and remote.ipv4_mapped is not None:
        remote = remote.ipv4_mapped
    host = urlsplit(peer_url).hostname
    if not host:
        return False
    try:
        return ipaddress.ip_address(host) == remote
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return any(_same_address(info[4][0], remote) for info in found)


def _same_address(text: t.Any, remote: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(str(text).partition("%")[0]) == remote
    except ValueError:
        return False


def parse_offset(text: str) -> int | None:
    """A byte offset from ASCII digits only (``str.isdigit`` takes ``"²"``, which
    ``int`` refuses), below ``2**62``; ``None`` for anything else."""
    offset = ascii_int(text, max_digits=19)
    return offset if offset is not None and offset < _MAX_OFFSET else None
