"""The instance's upstream registries, and which of them serves a repository name.

Instance administrators define the upstreams in ``DEPENDENCY_PROXY_UPSTREAMS`` (see
:mod:`.config`); a group uses all of them in the order defined, or the narrowed and
reordered list its owners keep (``ordered()`` of a :class:`GroupUpstreamSource`).

A name reaches an upstream one of two ways:

- its first component is a registry host of an entry (``ghcr.io/org/app``): that
  entry only, for ``org/app``;
- otherwise the group's ordered list: each entry is asked in turn, a ``404`` moves on to
  the next, an outage stops (the caller answers for it; the name is never served from
  a different registry because the first one is down).

Knows nothing of Flask, the database or storage: the group's list comes in as data.
There is one client (a :class:`~.registry.RegistryClient`, the HTTP
:class:`~.client.UpstreamClient` in an application) per entry and credential, so tokens,
rate limits and the ``Retry-After`` of one credential stay its own; the circuit breaker
(connection failures) is shared by an entry's clients.
"""

from __future__ import annotations

import dataclasses
import threading
import typing as t

from .breaker import CircuitBreaker
from .credentials import credential_id
from .registry import RegistryClient

#: The registry Docker Hub's images are pulled from.
DOCKER_HUB_URL = "https://registry-1.docker.io"
#: Names of Docker Hub in image references.
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
#: Where Docker Hub's token realm lives.
DOCKER_HUB_AUTH_HOSTS = ("auth.docker.io",)


@dataclasses.dataclass(frozen=True)
class UpstreamEntry:
    """One upstream registry of the instance.

    :param name: the key in ``DEPENDENCY_PROXY_UPSTREAMS`` (what groups list and what a
        cached manifest records).
    :param url: the registry's base URL.
    :param hosts: registry host names that route an image name to this entry.
    :param username: the instance-wide credential, sent only to the entry's token realm.
    :param allow_private_redirects: blob redirects and token realms may lead to private
        and loopback addresses (an on-premise registry whose storage is internal).
    :param auth_hosts: hosts a token realm may be on besides the upstream's own host.
    :param library_prefix: the namespace one-component names live in upstream
        (Docker Hub's ``library``); ``None`` leaves names as they are.
    """

    name: str
    url: str
    hosts: tuple[str, ...] = ()
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    allow_private_redirects: bool = False
    auth_hosts: tuple[str, ...] = ()
    library_prefix: str | None = None

    def repository(self, image: str) -> str:
        """The repository name upstream for an image name without a registry host."""
        if self.library_prefix and "/" not in image:
            return f"{self.library_prefix}/{image}"
        return image

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.username and self.password:
            return self.username, self.password
        return None


def default_library_prefix(hosts: t.Iterable[str]) -> str | None:
    """``library`` for an entry that serves one of Docker Hub's names, else ``None``.

    Docker's reference rule puts one-component names of ``docker.io`` in ``library/``
    (``alpine`` is ``docker.io/library/alpine``), so a mirror of Docker Hub needs it too.
    """
    return "library" if any(host in DOCKER_HUB_HOSTS for host in hosts) else None


def docker_hub_entry(
    name: str = "dockerhub",
    url: str = DOCKER_HUB_URL,
    username: str | None = None,
    password: str | None = None,
) -> UpstreamEntry:
    return UpstreamEntry(
        name=name,
        url=url,
        hosts=DOCKER_HUB_HOSTS,
        username=username,
        password=password,
        auth_hosts=DOCKER_HUB_AUTH_HOSTS,
        library_prefix="library",
    )


class GroupEntry(t.Protocol):
    """One entry of a group's ordered list: an instance upstream's name, and the group's
    own credential for it (``None`` uses the instance credential)."""

    @property
    def name(self) -> str: ...

    @property
    def username(self) -> str | None: ...

    @property
    def password(self) -> str | None: ...


class GroupUpstreamSource(t.Protocol):
    """Where a group's ordered list of upstreams comes from."""

    def ordered(self, group_id: int, instance_names: t.Sequence[str]) -> t.Sequence[GroupEntry]:
        """The group's list; by default every instance name in order, no credentials."""
        ...


@dataclasses.dataclass(frozen=True)
class InstanceUpstream:
    """A :class:`GroupEntry` without a group credential."""

    name: str
    username: str | None = None
    password: str | None = None


class InstanceOrder:
    """Every group uses every instance upstream in the order defined."""

    def ordered(self, group_id: int, instance_names: t.Sequence[str]) -> list[InstanceUpstream]:
        return [InstanceUpstream(name) for name in instance_names]


class UnknownRegistry(LookupError):
    """The name starts with a registry host that no upstream of the group serves."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One upstream to ask for a name: which entry, the repository there, the client."""

    name: str
    repository: str
    client: RegistryClient


@dataclasses.dataclass(frozen=True)
class Route:
    """The upstreams to ask for a name, in order.

    :param pinned: the name carried its registry host, so there is one candidate.
    """

    candidates: tuple[Candidate, ...]
    pinned: bool = False

    def sticky(self, upstream: str | None) -> tuple[Candidate, ...]:
        """The candidate named ``upstream`` alone (the one that served what the group
        cached), or every candidate when it is not on the route any more."""
        chosen = tuple(c for c in self.candidates if c.name == upstream)
        return chosen or self.candidates


@dataclasses.dataclass(frozen=True)
class UpstreamStatus:
    """What this process last saw of an upstream (for the group page and the API).

    :param last_status: the HTTP status of the last answer; ``None`` before any, or when
        the last request failed to connect.
    :param down_until: seconds since the epoch until which the upstream is not asked
        (after connection failures or a ``429``'s ``Retry-After``); ``None`` when it is.
    """

    last_status: int | None
    rate_limit_limit: int | None
    rate_limit_remaining: int | None
    down_until: float | None


ClientFactory = t.Callable[
    [UpstreamEntry, "tuple[str, str] | None", CircuitBreaker], RegistryClient
]


class UpstreamSet:
    """The instance's upstreams and their clients.

    :param entries: in the order groups use them by default; the first is the default
        upstream (what a cached manifest without a recorded upstream came from).
    :param make_client: builds the client of an entry for a credential, sharing the
        entry's circuit breaker.
    :param make_breaker: builds an entry's circuit breaker.
    """

    def __init__(
        self,
        entries: t.Sequence[UpstreamEntry],
        make_client: ClientFactory,
        make_breaker: t.Callable[[], CircuitBreaker],
    ) -> None:
        if not entries:
            raise ValueError("at least one upstream is needed")
        self._entries = {entry.name: entry for entry in entries}
        self._by_host = {host: entry for entry in entries for host in entry.hosts}
        self._make_client = make_client
        self._breakers = {entry.name: make_breaker() for entry in entries}
        self._clients: dict[tuple[str, str], RegistryClient] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Every upstream's name, in the instance's order."""
        return list(self._entries)

    def entry(self, name: str) -> UpstreamEntry:
        """:raises KeyError: no upstream of that name."""
        return self._entries[name]

    @property
    def default(self) -> UpstreamEntry:
        return next(iter(self._entries.values()))

    def client(self, name: str, credentials: tuple[str, str] | None = None) -> RegistryClient:
        """The client of upstream ``name`` for a group's own ``credentials``, or for the
        instance credential when ``None``."""
        entry = self._entries[name]
        used = credentials or entry.credentials
        key = (name, credential_id(used))
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._make_client(entry, used, self._breakers[name])
                self._clients[key] = client
            return client

    def status(self, name: str, credentials: tuple[str, str] | None = None) -> UpstreamStatus:
        """What this process last saw of upstream ``name`` with ``credentials`` (the
        instance credential when ``None``).

        :raises KeyError: no upstream of that name.
        """
        entry = self._entries[name]
        key = (name, credential_id(credentials or entry.credentials))
        breaker = self._breakers[name]
        with self._lock:
            client = self._clients.get(key)
        down_until = breaker.open_until()
        if client is None:
            return UpstreamStatus(None, None, None, down_until)
        throttled = client.throttled_until()
        moments = [m for m in (down_until, throttled) if m is not None]
        return UpstreamStatus(
            last_status=client.last_status,
            rate_limit_limit=client.rate_limit_limit,
            rate_limit_remaining=client.rate_limit_remaining,
            down_until=max(moments) if moments else None,
        )

    def route(self, image: str, group_list: t.Sequence[GroupEntry]) -> Route:
        """The upstreams to ask for ``image``, for a group with this ordered list.

        :raises UnknownRegistry: the name starts with a registry host (a first component
            with a dot) that the group's upstreams do not serve.
        """
        usable = [entry for entry in group_list if entry.name in self._entries]
        first, sep, rest = image.partition("/")
        if sep:
            pinned = self._by_host.get(first)
            if pinned is not None:
                chosen = [entry for entry in usable if entry.name == pinned.name]
                if not chosen:
                    raise UnknownRegistry(f"this group does not use the upstream for {first}")
                return Route((self._candidate(chosen[0], pinned.repository(rest)),), pinned=True)
            if "." in first:
                raise UnknownRegistry(f"no upstream serves the registry {first}")
        return Route(
            tuple(
                self._candidate(entry, self._entries[entry.name].repository(image))
                for entry in usable
            )
        )

    def _candidate(self, entry: GroupEntry, repository: str) -> Candidate:
        own = (entry.username, entry.password) if entry.username and entry.password else None
        return Candidate(entry.name, repository, self.client(entry.name, own))
