"""Upstream entries written by hand: one that serves ``docker.io`` gets Docker Hub's
``library/`` rule unless it says otherwise, as Docker's own reference rule ties
``library/`` to that host."""

from __future__ import annotations

import typing as t

import pytest

from flask_dependency_proxy.config import ConfigError
from flask_dependency_proxy.config.upstreams import upstream_entries
from flask_dependency_proxy.upstream.breaker import CircuitBreaker
from flask_dependency_proxy.upstream.routing import InstanceOrder, UpstreamEntry, UpstreamSet

KEY = "DEPENDENCY_PROXY_UPSTREAMS"


def routes(entries: t.Sequence[UpstreamEntry], image: str) -> list[tuple[str, str]]:
    """``(upstream, repository there)`` for each upstream asked for ``image``."""
    upstreams = UpstreamSet(
        entries, lambda *_: t.cast(t.Any, object()), lambda: CircuitBreaker(3, 5.0)
    )
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
