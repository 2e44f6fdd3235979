"""One upstream fetch per blob across the hosts that share the database.

The host that holds a digest's fetch lease (:mod:`.leases`) fetches it from upstream;
every other host streams the bytes from the fetching host's peer route
(:mod:`..blueprints.peer`, with a token of :mod:`.peer_tokens`) as they arrive, verifies
the digest itself and serves its own clients from its own spool file, exactly as if it
fetched (:class:`FleetSource`). Upstream bearer tokens are shared through the database
too (:mod:`.fleet_tokens`).

A host that dies stops renewing its lease; once the lease is older than
``FETCH_LEASE_SECONDS`` the next host that needs the blob takes it over and resumes
from upstream (a range request) at the byte its peer stream stopped at, so clients
following it keep their transfer (:class:`FleetOpener`).
"""

from __future__ import annotations

import logging
import time
import typing as t

import requests

from ..upstream.client import BlobResponse
from ..upstream.errors import UpstreamError
from ..upstream.registry import BlobStream
from .leases import FetchLeases
from .peer_tokens import PEER_BLOB_PATH, PeerTokens

log = logging.getLogger(__name__)

#: Bytes per chunk read from a peer.
_PEER_CHUNK = 1024 * 1024
#: How often a host that read a blob from a peer looks for the peer's commit.
_COMMIT_POLL_SECONDS = 0.1

Opener = t.Callable[[int], BlobStream]


class CommittedMeanwhile(Exception):
    """The lease was free because the host that held it just committed the blob: there is
    nothing left to fetch.

    :param size: the committed blob's size.
    """

    def __init__(self, size: int) -> None:
        super().__init__(f"committed meanwhile, {size} bytes")
        self.size = size


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

    def opener(
        self,
        digest: str,
        open_upstream: Opener,
        committed_size: t.Callable[[str], int | None] = lambda digest: None,
    ) -> FleetOpener:
        return FleetOpener(self, digest, open_upstream, committed_size)

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
    that followed a peer that died takes over upstream once the peer's lease expires.

    :param committed_size: the size of the blob in the store the fleet shares, ``None``
        when it is not there.
    :raises CommittedMeanwhile: (first call) the blob was committed since the caller
        looked.
    """

    def __init__(
        self,
        source: FleetSource,
        digest: str,
        open_upstream: Opener,
        committed_size: t.Callable[[str], int | None],
    ) -> None:
        self.source = source
        self.digest = digest
        self.open_upstream = open_upstream
        self.committed_size = committed_size
        #: Whether the bytes come from another host (which commits them itself).
        self.from_peer = False

    def __call__(self, offset: int) -> BlobStream:
        leases = self.source.leases
        deadline = time.monotonic() + 2 * leases.ttl.total_seconds() + 10
        while True:
            claim = leases.claim(self.digest)
            if claim.ours:
                if offset == 0:
                    # A lease is also free right after its holder committed the blob
                    # and let go: the store says so before upstream is asked again.
                    size = self.committed_size(self.digest)
                    if size is not None:
                        raise CommittedMeanwhile(size)
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

    def peer_committed(self, size: int) -> bool:
        """Whether the peer this fetch read from committed the blob (``size`` bytes) to
        the store the hosts share: wait while it still holds the lease (its upload is
        running); ``False`` once it let go or died without the blob in the store, and
        this host commits the blob itself.

        The peer's stream ends when the blob is verified, not when it is committed, so
        this host's clients have every byte while the peer still uploads.
        """
        while True:
            if self.committed_size(self.digest) == size:
                return True
            if self.source.leases.claim(self.digest).ours:
                # Let go (committed just now, or failed) or expired: the store decides.
                return self.committed_size(self.digest) == size
            time.sleep(_COMMIT_POLL_SECONDS)

    def release(self) -> None:
        self.source.leases.release(self.digest)
