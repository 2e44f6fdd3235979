"""The parse of ``DEPENDENCY_PROXY_UPSTREAMS`` (named upstream entries, checked one
field at a time) and the one entry its shorthand ``DEPENDENCY_PROXY_UPSTREAM_URL``
stands for.
"""

from __future__ import annotations

import json
import re
import typing as t

from ..upstream.routing import (
    DOCKER_HUB_URL,
    UpstreamEntry,
    default_library_prefix,
    docker_hub_entry,
)
from .parsers import ConfigError, boolean, http_url, optional, text

_UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: A registry host name as the first component of an image name: lower case, a dot.
_REGISTRY_HOST = re.compile(r"[a-z0-9]+(?:-+[a-z0-9]+)*(?:\.[a-z0-9]+(?:-+[a-z0-9]+)*)+")
_AUTH_HOST = re.compile(r"[a-z0-9]+(?:[.-]+[a-z0-9]+)*")
_NAMESPACE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_ENTRY_FIELDS = frozenset(
    {
        "url",
        "hosts",
        "username",
        "password",
        "allow_private_redirects",
        "auth_hosts",
        "library_prefix",
    }
)


def upstream_entries(key: str, value: t.Any) -> tuple[UpstreamEntry, ...] | None:
    """A mapping from name to entry (or its JSON text); ``None`` for the shorthand."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"{key} must be a JSON object: {exc}.") from None
    if not isinstance(value, t.Mapping) or not value:
        raise ConfigError(f"{key} must map upstream names to entries, not {value!r}.")
    entries = tuple(_upstream_entry(f"{key}[{name!r}]", name, item) for name, item in value.items())
    owners: dict[str, str] = {}
    for entry in entries:
        for host in entry.hosts:
            if host in owners:
                raise ConfigError(
                    f"{key}: the host {host!r} routes to both {owners[host]!r} and {entry.name!r}."
                )
            owners[host] = entry.name
    return entries


def _upstream_entry(where: str, name: t.Any, item: t.Any) -> UpstreamEntry:
    if not isinstance(name, str) or not _UPSTREAM_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: an upstream name is 1-64 lower-case letters, digits, '_' and '-'."
        )
    if not isinstance(item, t.Mapping):
        raise ConfigError(f"{where} must be an object with a 'url', not {item!r}.")
    unknown = sorted(set(item) - _ENTRY_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where} has unknown fields {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(sorted(_ENTRY_FIELDS))}."
        )
    if "url" not in item:
        raise ConfigError(f"{where} needs a 'url'.")
    username = optional(text("a username"))(f"{where}.username", item.get("username"))
    password = optional(text("a password"))(f"{where}.password", item.get("password"))
    if bool(username) != bool(password):
        raise ConfigError(f"{where}: set both 'username' and 'password', or neither.")
    hosts = _host_list(f"{where}.hosts", item.get("hosts"), _REGISTRY_HOST)
    if "library_prefix" in item:
        library_prefix = _library_prefix(f"{where}.library_prefix", item["library_prefix"])
    else:
        library_prefix = default_library_prefix(hosts)
    return UpstreamEntry(
        name=name,
        url=http_url(f"{where}.url", item["url"], credentials_go="its 'username' and 'password'"),
        hosts=hosts,
        username=username,
        password=password,
        allow_private_redirects=boolean(
            f"{where}.allow_private_redirects", item.get("allow_private_redirects", False)
        ),
        auth_hosts=_host_list(f"{where}.auth_hosts", item.get("auth_hosts"), _AUTH_HOST),
        library_prefix=library_prefix,
    )


def _library_prefix(key: str, value: t.Any) -> str | None:
    """The entry's own prefix; ``null`` or ``""`` says the entry has none."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _NAMESPACE.fullmatch(value):
        raise ConfigError(
            f"{key} must be a repository name component such as 'library' (or null for"
            f" none), not {value!r}."
        )
    return value


def _host_list(key: str, value: t.Any, pattern: re.Pattern[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, t.Sequence):
        raise ConfigError(f"{key} must be a list of host names, not {value!r}.")
    for host in value:
        if not isinstance(host, str) or not pattern.fullmatch(host):
            raise ConfigError(
                f"{key}: {host!r} is not a lower-case host name"
                + (" with a dot (such as 'ghcr.io')." if pattern is _REGISTRY_HOST else ".")
            )
    return tuple(value)


def shorthand_upstream(url: str, username: str | None, password: str | None) -> UpstreamEntry:
    """The one entry ``UPSTREAM_URL`` stands for: Docker Hub's (``dockerhub``) for its
    URL, else ``default``, with Docker Hub's ``library/`` rule kept for look-alikes."""
    if url == DOCKER_HUB_URL:
        return docker_hub_entry(username=username, password=password)
    return UpstreamEntry(
        name="default", url=url, username=username, password=password, library_prefix="library"
    )
