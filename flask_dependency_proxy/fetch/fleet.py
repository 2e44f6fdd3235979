"""One upstream fetch per blob across the hosts that share the database.

Within a host, the lock files of :mod:`.host_lock` elect the one process that fetches a
digest. That process then claims the digest's row in ``dependency_proxy_fetch_leases``
(:class:`FetchLeases`): the first host to claim it fetches from upstream; every other
host streams the bytes from the fetching host's peer route (:mod:`.blueprints.peer`)
as they arrive, verifies the digest itself and serves its own clients from its own
spool file, exactly as if it fetched.

A claim is one short statement (``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the
lease expired): no connection or transaction is held across a transfer. Upstream bearer
tokens are shared the same way (:class:`FleetTokens`). The holding
process renews its leases every few seconds from one thread, with one ``UPDATE`` for
all of them. A host that dies stops renewing; once its lease is older than
``FETCH_LEASE_SECONDS`` the next host that needs the blob takes it over and resumes
from upstream (a range request) at the byte its peer stream stopped at, so clients
following it keep their transfer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import logging
import os
import socket
import threading
import time
import typing as t
import uuid
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa
from itsdangerous import BadSignature, URLSafeSerializer

from ..models.tables import FetchLease, UpstreamToken, utcnow
from ..oci.digits import ascii_int
from ..upstream.client import BlobResponse
from ..upstream.errors import UpstreamError
from ..upstream.registry import BlobStream
from ..upstream.token_cache import SharedTokenFiles, hashed_key

log = logging.getLogger(__name__)

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
#: Bytes per chunk read from a peer.
_PEER_CHUNK = 1024 * 1024

Opener = t.Callable[[int], BlobStream]


@dataclasses.dataclass(frozen=True)
class Claim:
    """The outcome of claiming a digest: ours to fetch, or the host that fetches it."""

    ours: bool
    peer_url: str | None = None


class FetchLeases:
    """The fetch leases of this process, kept in the host's database.

    :param engine: the database engine (called, so it can be resolved lazily).
    :param peer_url: this host's base URL as other hosts reach it.
    :param ttl_seconds: a lease not renewed for this long may be taken over.
    """

    def __init__(
        self,
        engine: t.Callable[[], sa.Engine],
        peer_url: str,
        *,
        ttl_seconds: float,
        clock: t.Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self.peer_url = peer_url
        self.ttl = dt.timedelta(seconds=ttl_seconds)
        self._clock = clock
        self._holder = _holder()
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_pid: int | None = None
        self._table = t.cast(sa.Table, FetchLease.__table__)

    @property
    def holder(self) -> str:
        """This process's name in the lease rows (a new one after a fork)."""
        if self._heartbeat_pid not in (None, os.getpid()):
            self._holder = _holder()
            self._held.clear()
            self._heartbeat = None
            self._heartbeat_pid = None
        return self._holder

    def claim(self, digest: str) -> Claim:
        """Claim ``digest`` for this process unless a live lease of another host holds it.

        A database that cannot be reached makes the claim ours: the fleet then fetches
        once per host rather than failing the pull.
        """
        holder = self.holder
        now = self._clock()
        table = self._table
        insert = _insert_for(self._engine())
        statement = (
            insert(table)
            .values(digest=digest, holder=holder, peer_url=self.peer_url, heartbeat_at=now)
            .on_conflict_do_update(
                index_elements=[table.c.digest],
                set_={"holder": holder, "peer_url": self.peer_url, "heartbeat_at": now},
                where=sa.or_(table.c.heartbeat_at < now - self.ttl, table.c.holder == holder),
            )
            .returning(table.c.holder)
        )
        try:
            with self._engine().begin() as connection:
                if connection.execute(statement).first() is not None:
                    self._hold(digest)
                    return Claim(ours=True)
                row = connection.execute(
                    sa.select(table.c.peer_url).where(table.c.digest == digest)
                ).first()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("fetch lease of %s not claimed (%s): fetching it here", digest, exc)
            return Claim(ours=True)
        if row is None:  # released between the two statements
            return self.claim(digest)
        return Claim(ours=False, peer_url=str(row.peer_url))

    def release(self, digest: str) -> None:
        """End this process's lease of ``digest`` (its fetch committed or failed)."""
        with self._lock:
            if digest not in self._held:
                return
            self._held.discard(digest)
        table = self._table
        try:
            with self._engine().begin() as connection:
                connection.execute(
                    sa.delete(table).where(table.c.digest == digest, table.c.holder == self.holder)
                )
        except sa.exc.SQLAlchemyError as exc:
            log.warning("fetch lease of %s not released (%s): it expires", digest, exc)

    def renew(self) -> int:
        """Renew every lease this process holds, in one statement; how many."""
        with self._lock:
            held = sorted(self._held)
        if not held:
            return 0
        table = self._table
        with self._engine().begin() as connection:
            result = connection.execute(
                sa.update(table)
                .where(table.c.holder == self.holder, table.c.digest.in_(held))
                .values(heartbeat_at=self._clock())
            )
        return int(result.rowcount or 0)

    def _hold(self, digest: str) -> None:
        with self._lock:
            self._held.add(digest)
            if self._heartbeat is None:
                self._heartbeat_pid = os.getpid()
                self._heartbeat = threading.Thread(
                    target=self._beat, name="dependency-proxy-fetch-leases", daemon=True
                )
                self._heartbeat.start()

    def _beat(self) -> None:
        """Renew the leases while this process holds any; the next claim starts it again."""
        interval = max(self.ttl.total_seconds() / 4, 0.2)
        while True:
            time.sleep(interval)
            with self._lock:
                if not self._held:
                    self._heartbeat = None
                    return
            try:
                self.renew()
            except sa.exc.SQLAlchemyError as exc:
                log.warning("fetch leases not renewed: %s", exc)


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


class PeerRefused(UpstreamError):
    """A peer refused this host's token (``401``/``403``): it will refuse the next one too,
    so the host fetches the blob itself instead of waiting for the lease."""


class FleetSource:
    """Where a host's fetch of a blob reads its bytes: upstream when it holds the lease,
    else the host that does.

    :param connect_timeout: seconds to connect to a peer.
    :param read_timeout: seconds between two reads from a peer.
    """

    def __init__(
        self,
        leases: FetchLeases,
        tokens: PeerTokens,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.leases = leases
        self.tokens = tokens
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session = requests.Session()

    def opener(self, digest: str, open_upstream: Opener) -> FleetOpener:
        return FleetOpener(self, digest, open_upstream)

    def open_peer(self, peer_url: str, digest: str, offset: int) -> BlobStream:
        """Stream ``digest`` from ``offset`` out of the fetch a peer runs.

        :raises UpstreamError: the peer cannot be reached or does not have it.
        """
        token = self.tokens.issue(peer_url, digest, offset)
        try:
            response = self._session.get(
                f"{peer_url}{PEER_BLOB_PATH}{digest}",
                params={"offset": str(offset)},
                headers={"Authorization": f"Bearer {token}"},
                timeout=(self.connect_timeout, self.read_timeout),
                stream=True,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise UpstreamError(f"peer {peer_url} unreachable: {exc}") from exc
        if response.status_code in (401, 403):
            response.close()
            raise PeerRefused(f"peer {peer_url} refused this host's token for {digest}")
        if response.status_code != 200:
            response.close()
            raise UpstreamError(f"peer {peer_url} answered {response.status_code} for {digest}")
        return BlobResponse(response, _PEER_CHUNK, offset)


class FleetOpener:
    """The opener a fetch resumes through: each call asks the lease again, so a fetch
    that followed a peer that died takes over upstream once the peer's lease expires."""

    def __init__(self, source: FleetSource, digest: str, open_upstream: Opener) -> None:
        self.source = source
        self.digest = digest
        self.open_upstream = open_upstream
        #: Whether the bytes come from another host (which commits them itself).
        self.from_peer = False

    def __call__(self, offset: int) -> BlobStream:
        leases = self.source.leases
        deadline = time.monotonic() + 2 * leases.ttl.total_seconds() + 10
        while True:
            claim = leases.claim(self.digest)
            if claim.ours:
                self.from_peer = False
                return self.open_upstream(offset)
            assert claim.peer_url is not None
            try:
                stream = self.source.open_peer(claim.peer_url, self.digest, offset)
            except PeerRefused as exc:
                # Waiting would not help: the peer will refuse the next token too.
                log.warning(
                    "%s; fetching it from upstream here (a host on another version, clocks"
                    " apart, or a PEER_URL that does not name the address this host connects"
                    " from)",
                    exc,
                )
                self.from_peer = False
                return self.open_upstream(offset)
            except UpstreamError as exc:
                if time.monotonic() > deadline:
                    raise
                log.info("waiting for the fetch of %s to be taken over: %s", self.digest, exc)
                time.sleep(max(leases.ttl.total_seconds() / 5, 0.1))
                continue
            self.from_peer = True
            return stream

    def release(self) -> None:
        self.source.leases.release(self.digest)


class FleetTokens:
    """The host's token files in front of the fleet's table of tokens.

    :param engine: the database engine (called, so it can be resolved lazily).
    """

    def __init__(self, files: SharedTokenFiles, engine: t.Callable[[], sa.Engine]) -> None:
        self.files = files
        self._engine = engine
        self._table = t.cast(sa.Table, UpstreamToken.__table__)

    def locked(self, key: str) -> t.ContextManager[None]:
        return self.files.locked(key)

    def load(self, key: str) -> tuple[str, float] | None:
        entry = self.files.load(key)
        if entry is not None and entry[1] > time.time():
            return entry
        table = self._table
        try:
            with self._engine().begin() as connection:
                row = connection.execute(
                    sa.select(table.c.token, table.c.expires_at).where(
                        table.c.key == hashed_key(key)
                    )
                ).first()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("upstream tokens of the fleet not read: %s", exc)
            return entry
        if row is None:
            return entry
        self.files.save(key, row.token, row.expires_at)
        return str(row.token), float(row.expires_at)

    def save(self, key: str, token: str, expires_at: float) -> None:
        self.files.save(key, token, expires_at)
        table = self._table
        hashed = hashed_key(key)
        try:
            with self._engine().begin() as connection:
                connection.execute(sa.delete(table).where(table.c.key == hashed))
                connection.execute(
                    sa.insert(table).values(key=hashed, token=token, expires_at=expires_at)
                )
        except sa.exc.SQLAlchemyError as exc:
            log.warning("upstream token not shared with the fleet: %s", exc)


def _insert_for(engine: sa.Engine) -> t.Any:
    """The dialect's ``INSERT`` with ``ON CONFLICT`` (PostgreSQL and SQLite have it)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def _holder() -> str:
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
