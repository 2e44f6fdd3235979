"""What the proxy counts, for Prometheus.

:class:`Metrics` is the seam: every component reports to it, and the base class drops
everything, so a deployment without the ``metrics`` extra pays one method call. With
``DEPENDENCY_PROXY_METRICS_ENABLED``, :class:`PrometheusMetrics` records into
``prometheus_client``; under several worker processes its multiprocess mode (the
``PROMETHEUS_MULTIPROC_DIR`` environment variable, set before the workers start) makes
every worker's counts part of each scrape.

Labels stay low-cardinality: route kinds, methods, status codes, cache outcomes and the
instance's upstream names. Image names never become labels; group paths only when an
operator opts in (``DEPENDENCY_PROXY_METRICS_GROUP_LABELS``).
"""

from __future__ import annotations

import contextlib
import os
import typing as t

#: The exposition format's content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Drops every report: the proxy without metrics."""

    def registry_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """A registry or token route answered (``seconds`` until its headers)."""

    def cache_outcome(self, kind: str, outcome: str, group: str | None = None) -> None:
        """A manifest or blob GET was answered as a hit, revalidated, miss or stale."""

    def served_bytes(self, kind: str, from_cache: bool, size: int) -> None:
        """A manifest or blob body of ``size`` bytes went to a client."""

    def upstream_request(self, upstream: str, kind: str, status: str, seconds: float) -> None:
        """An upstream answered (``status`` a code, or ``error`` without an answer)."""

    def upstream_fetched_bytes(self, size: int) -> None:
        """A blob fetch committed ``size`` bytes from upstream."""

    def upstream_rate_limit(self, upstream: str, remaining: int) -> None:
        """An upstream reported the pulls left in its rate-limit window."""

    @contextlib.contextmanager
    def fetch_in_flight(self) -> t.Iterator[None]:
        """Brackets one upstream blob fetch that this process runs."""
        yield

    def cleanup_ran(self, removed: t.Mapping[str, int] | None, *, failed: bool = False) -> None:
        """A cleanup finished, having removed these counts by kind (rows, files, bytes);
        ``None``: another process held the cleanup lease, or it ``failed``."""

    def pull_records(self, result: str, count: int) -> None:
        """Entries of the pull record: ``written``, ``deferred`` (a write failed; kept for
        the next), or ``lost`` (dropped from a full buffer: pulls served, not recorded)."""

    def pull_refused(self, reason: str) -> None:
        """A manifest pull refused by a supply-chain control (``blocked``, ``refused``)."""

    def tag_refreshed(self, result: str, prefetched_bytes: int = 0) -> None:
        """The refresher checked a hot tag upstream: ``unchanged``, ``moved`` (and fetched
        ``prefetched_bytes`` of its new blobs), ``skipped`` (the upstream's budget was
        spent) or ``failed``."""

    def signature_verdict(self, mode: str, status: str) -> None:
        """A manifest pull was checked against its group's signature policy (``status``:
        verified, unsigned, invalid; counted on every pull, warm ones included)."""

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return b""


class PrometheusMetrics(Metrics):
    """Records into ``prometheus_client``: one set of collectors per application.

    :param group_labels: label cache outcomes with the group path too.
    """

    def __init__(self, *, group_labels: bool = False) -> None:
        try:
            import prometheus_client as prom
        except ImportError:  # pragma: no cover - the config check names the extra
            raise RuntimeError(
                "DEPENDENCY_PROXY_METRICS_ENABLED needs prometheus_client:"
                " pip install 'flask-dependency-proxy[metrics]'"
            ) from None
        self._prom = prom
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode the values live in files shared by the workers, and a
        # scrape reads them through a collector; otherwise this app's own registry
        # holds them (never the global one, so two apps in one process do not clash).
        self._registry = prom.CollectorRegistry()
        registry = None if self.multiprocess else self._registry
        self.group_labels = group_labels

        def counter(name: str, doc: str, labels: t.Sequence[str] = ()) -> t.Any:
            return prom.Counter(name, doc, list(labels), registry=registry)

        def histogram(name: str, doc: str, labels: t.Sequence[str]) -> t.Any:
            return prom.Histogram(
                name, doc, list(labels), buckets=_SECONDS_BUCKETS, registry=registry
            )

        self._requests = counter(
            "dependency_proxy_registry_requests",
            "Registry and token requests by route kind, method and status.",
            ("route", "method", "status"),
        )
        self._request_seconds = histogram(
            "dependency_proxy_registry_request_duration_seconds",
            "Time until a registry request's response headers, by route kind.",
            ("route",),
        )
        self._outcomes = counter(
            "dependency_proxy_cache_requests",
            "Manifest and blob GETs by cache outcome (hit, revalidated, miss, stale,"
            " cooldown-previous: a tag's previous digest while its new one is in cooldown).",
            ("kind", "outcome", *(("group",) if group_labels else ())),
        )
        self._served = counter(
            "dependency_proxy_served_bytes",
            "Manifest and blob bytes sent to clients, by whether the cache had them.",
            ("kind", "source"),
        )
        self._upstream_requests = counter(
            "dependency_proxy_upstream_requests",
            "Requests to upstream registries by upstream, kind and status.",
            ("upstream", "kind", "status"),
        )
        self._upstream_seconds = histogram(
            "dependency_proxy_upstream_request_duration_seconds",
            "Time until an upstream's response headers, by upstream and kind.",
            ("upstream", "kind"),
        )
        self._fetched = counter(
            "dependency_proxy_upstream_fetched_bytes",
            "Blob bytes fetched from upstream and committed to the cache.",
        )
        self._rate_limit = prom.Gauge(
            "dependency_proxy_upstream_rate_limit_remaining",
            "Pulls left in the upstream's rate-limit window, as it last reported.",
            ["upstream"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self._in_flight = prom.Gauge(
            "dependency_proxy_fetches_in_flight",
            "Upstream blob fetches running now.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._cleanups = counter(
            "dependency_proxy_cleanup_runs",
            "Cleanup runs by result (done, busy: another process ran it, failed).",
            ("result",),
        )
        self._pull_records = counter(
            "dependency_proxy_pull_records",
            "Entries of the pull record: written, deferred (a write failed; kept for the"
            " next) and lost (pulls served but not recorded: the buffer was full).",
            ("result",),
        )
        self._refused = counter(
            "dependency_proxy_pulls_refused",
            "Manifest pulls refused by a supply-chain control (blocked; refused: in cooldown).",
            ("reason",),
        )
        self._signatures = counter(
            "dependency_proxy_signature_checks",
            "Manifest pulls checked against a signature policy, by mode and verdict.",
            ("mode", "status"),
        )
        self._refreshes = counter(
            "dependency_proxy_tag_refreshes",
            "Hot tags the refresher checked upstream, by result (unchanged, moved,"
            " skipped: the upstream's budget was spent, failed).",
            ("result",),
        )
        self._prefetched = counter(
            "dependency_proxy_refresh_prefetched_bytes",
            "Blob bytes the refresher fetched for tags that moved upstream.",
        )
        self._removed = counter(
            "dependency_proxy_cleanup_removed",
            "What cleanup removed: manifest and blob rows, blob files and their bytes.",
            ("what",),
        )

    def signature_verdict(self, mode: str, status: str) -> None:
        self._signatures.labels(mode, status).inc()

    def registry_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._request_seconds.labels(route).observe(seconds)

    def cache_outcome(self, kind: str, outcome: str, group: str | None = None) -> None:
        if self.group_labels:
            self._outcomes.labels(kind, outcome, group or "").inc()
        else:
            self._outcomes.labels(kind, outcome).inc()

    def served_bytes(self, kind: str, from_cache: bool, size: int) -> None:
        self._served.labels(kind, "cache" if from_cache else "upstream").inc(size)

    def upstream_request(self, upstream: str, kind: str, status: str, seconds: float) -> None:
        self._upstream_requests.labels(upstream, kind, status).inc()
        self._upstream_seconds.labels(upstream, kind).observe(seconds)

    def upstream_fetched_bytes(self, size: int) -> None:
        self._fetched.inc(size)

    def upstream_rate_limit(self, upstream: str, remaining: int) -> None:
        self._rate_limit.labels(upstream).set(remaining)

    @contextlib.contextmanager
    def fetch_in_flight(self) -> t.Iterator[None]:
        self._in_flight.inc()
        try:
            yield
        finally:
            self._in_flight.dec()

    def cleanup_ran(self, removed: t.Mapping[str, int] | None, *, failed: bool = False) -> None:
        if failed:
            self._cleanups.labels("failed").inc()
            return
        if removed is None:
            self._cleanups.labels("busy").inc()
            return
        self._cleanups.labels("done").inc()
        for what, count in removed.items():
            if count:
                self._removed.labels(what).inc(count)

    def pull_records(self, result: str, count: int) -> None:
        if count:
            self._pull_records.labels(result).inc(count)

    def pull_refused(self, reason: str) -> None:
        self._refused.labels(reason).inc()

    def tag_refreshed(self, result: str, prefetched_bytes: int = 0) -> None:
        self._refreshes.labels(result).inc()
        if prefetched_bytes:
            self._prefetched.inc(prefetched_bytes)

    def exposition(self) -> bytes:
        prom = self._prom
        if not self.multiprocess:
            return t.cast(bytes, prom.generate_latest(self._registry))
        from prometheus_client import multiprocess

        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return t.cast(bytes, prom.generate_latest(registry))


def metrics_for(enabled: bool, *, group_labels: bool = False) -> Metrics:
    """The metrics an application reports to."""
    return PrometheusMetrics(group_labels=group_labels) if enabled else Metrics()
