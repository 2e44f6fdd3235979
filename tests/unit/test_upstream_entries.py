"""Upstream entries written by hand: one that serves ``docker.io`` gets Docker Hub's
``library/`` rule unless it says otherwise, as Docker's own reference rule ties
``library/`` to that host."""

from __future__ import annotations

import typing as t

import pytest

from flask_dependency_proxy.config import ConfigError
from flask_dependency_proxy.config.upstreams import shorthand_upstream, upstream_entries
from flask_dependency_proxy.upstream.breaker import CircuitBreaker
from flask_dependency_proxy.upstream.routing import (
    InstanceOrder,
    UnknownRegistry,
    UpstreamEntry,
    UpstreamSet,
)

KEY = "DEPENDENCY_PROXY_UPSTREAMS"


def routes(
    entries: t.Sequence[UpstreamEntry], image: str, ns: str | None = None
) -> list[tuple[str, str]]:
    """``(upstream, repository there)`` for each upstream asked for ``image``, of the
    registry ``ns`` when given (containerd's ``?ns=``)."""
    upstreams = UpstreamSet(
        entries, lambda *_: t.cast(t.Any, object()), lambda: CircuitBreaker(3, 5.0)
    )
    if ns is not None:
        image = upstreams.qualified(ns, image)
    route = upstreams.route(image, InstanceOrder().ordered(1, upstreams.names()))
    return [(candidate.name, candidate.repository) for candidate in route.candidates]


def test_an_entry_serving_docker_io_without_library_prefix_sends_alpine_as_library_alpine() -> None:
    entries = upstream_entries(
        KEY,
        {
            "hub": {"url": "https://mirror.example.com", "hosts": ["docker.io"]},
            "ghcr": {"url": "https://ghcr.io", "hosts": ["ghcr.io"]},
        },
    )
    assert entries is not None
    assert [entry.library_prefix for entry in entries] == ["library", None]
    assert routes(entries, "alpine") == [("hub", "library/alpine"), ("ghcr", "alpine")]
    assert routes(entries, "docker.io/alpine") == [("hub", "library/alpine")]
    assert routes(entries, "docker.io/bitnami/redis") == [("hub", "bitnami/redis")]
    assert routes(entries, "ghcr.io/alpine") == [("ghcr", "alpine")]


@pytest.mark.parametrize("hosts", [["index.docker.io"], ["registry-1.docker.io", "quay.io"]])
def test_every_name_of_docker_hub_gets_the_rule(hosts: list[str]) -> None:
    entries = upstream_entries(KEY, {"hub": {"url": "https://mirror.example.com", "hosts": hosts}})
    assert entries is not None and entries[0].library_prefix == "library"


@pytest.mark.parametrize("said", [None, ""])
def test_an_entry_that_says_no_prefix_keeps_names_as_they_are(said: str | None) -> None:
    entries = upstream_entries(
        KEY,
        {
            "hub": {
                "url": "https://mirror.example.com",
                "hosts": ["docker.io"],
                "library_prefix": said,
            }
        },
    )
    assert entries is not None and entries[0].library_prefix is None
    assert routes(entries, "alpine") == [("hub", "alpine")]


def test_an_entry_says_its_own_prefix() -> None:
    entries = upstream_entries(
        KEY,
        {"hub": {"url": "https://m.example.com", "hosts": ["docker.io"], "library_prefix": "base"}},
    )
    assert entries is not None and routes(entries, "alpine") == [("hub", "base/alpine")]


def test_other_entries_get_no_prefix_and_bad_prefixes_are_refused() -> None:
    entries = upstream_entries(KEY, {"quay": {"url": "https://quay.io", "hosts": ["quay.io"]}})
    assert entries is not None and entries[0].library_prefix is None
    with pytest.raises(ConfigError, match="library_prefix"):
        upstream_entries(
            KEY,
            {"hub": {"url": "https://m.example.com", "hosts": ["docker.io"], "library_prefix": 5}},
        )


def test_a_registry_given_beside_the_name_routes_as_a_host_prefix_does() -> None:
    entries = upstream_entries(
        KEY,
        {
            "hub": {"url": "https://mirror.example.com", "hosts": ["docker.io"]},
            "ghcr": {"url": "https://ghcr.io", "hosts": ["ghcr.io"]},
        },
    )
    assert entries is not None
    assert routes(entries, "library/alpine", ns="docker.io") == [("hub", "library/alpine")]
    assert routes(entries, "alpine", ns="docker.io") == [("hub", "library/alpine")]
    # The first component is a name inside the registry, not a host of its own.
    assert routes(entries, "ghcr.io/org/app", ns="docker.io") == [("hub", "ghcr.io/org/app")]
    assert routes(entries, "org/app", ns="ghcr.io") == [("ghcr", "org/app")]
    with pytest.raises(UnknownRegistry, match="quay.io"):
        routes(entries, "org/app", ns="quay.io")


def test_the_one_upstream_shorthand_serves_docker_hubs_names() -> None:
    """``UPSTREAM_URL`` of a Docker Hub mirror: containerd's ``?ns=docker.io`` reaches it;
    another registry's does not."""
    entry = shorthand_upstream("https://hub-mirror.example.com", None, None)
    assert routes([entry], "library/alpine", ns="docker.io") == [("default", "library/alpine")]
    assert routes([entry], "alpine") == [("default", "library/alpine")]
    with pytest.raises(UnknownRegistry, match="ghcr.io"):
        routes([entry], "org/app", ns="ghcr.io")
