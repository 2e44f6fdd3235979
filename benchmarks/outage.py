"""Cached-tag pulls while upstream rate-limits or is dead: how long each takes and how
many requests reach upstream, for ours (default settings) and for CNCF distribution 2.8
in proxy mode, both caching the same small image from the same upstream.

For each upstream state, each cache starts afresh (a new process, an empty cache) with a
front of its own before the upstream, pulls the image once, and then the front turns
into that state: it keeps forwarding (``healthy``), answers every request ``429`` with
``Retry-After: 600`` (``429``), or is replaced by a port that never completes a TCP
handshake (``dead``: a connect timeout, as a firewalled or powered-off host gives).
Then ``--requests`` manifest GETs of the cached tag are sent one after another, each on
a new connection as separate CI jobs would (so they reach any of the gunicorn workers),
and the image is pulled with skopeo.

    python benchmarks/outage.py           # 10 GETs per state for ours, 3 for distribution
    python benchmarks/outage.py --quick   # 4 and 2

It is a benchmark, not a test: it never fails on timing. The Markdown table goes to
stdout and to ``benchmarks/results/outage.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import requests

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness as h
from tests.support.faultproxy import FaultProxy, Status
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

RESULTS = h.BENCH_DIR / "results"
STATES = ("healthy", "429", "dead")
#: Longest wait for one answer; distribution waits for its dial timeout on a dead upstream.
CLIENT_TIMEOUT_SECONDS = 120
#: gunicorn workers of ours, as ``examples/gunicorn.conf.py`` runs on two cores. Each
#: worker learns of a ``429`` or a dead upstream on its own.
WORKERS = 2


class Blackhole:
    """A listening port whose accept queue is kept full: new connections never complete
    their handshake, so clients wait for their connect timeout."""

    def __init__(self, port: int) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(0)
        # One connection fills a backlog of 0; every later SYN is dropped.
        self._filler = socket.create_connection(("127.0.0.1", port), timeout=5)

    def close(self) -> None:
        self._filler.close()
        self._listener.close()


class Front:
    """What a cache's upstream URL reaches: a fault proxy, then a blackhole on its port."""

    def __init__(self, upstream: Registry) -> None:
        self.proxy = FaultProxy(upstream.url).start()
        self.url = self.proxy.url
        self.port = self.proxy.port
        self._blackhole: Blackhole | None = None

    def set(self, state: str) -> None:
        if state == "429":
            self.proxy.add(Status(429, retry_after=600))
        elif state == "dead":
            self.proxy.stop()
            self._blackhole = Blackhole(self.port)

    def requests_seen(self) -> int:
        """Requests the front answered or forwarded (a blackhole answers none)."""
        return len(self.proxy.requests)

    def close(self) -> None:
        if self._blackhole is not None:
            self._blackhole.close()
        else:
            self.proxy.stop()


def manifest_gets(
    cache: h.Cache, image: h.SeededImage, count: int
) -> tuple[list[float], list[int], list[str]]:
    """Seconds, status and stale marker of ``count`` sequential manifest GETs."""
    seconds, statuses, stale = [], [], []
    headers = {**cache.auth_headers(image), "Accept": image.media_type}
    for _ in range(count):
        session = requests.Session()
        session.trust_env = False
        started = time.monotonic()
        try:
            answer = session.get(
                cache.manifest_url(image), headers=headers, timeout=CLIENT_TIMEOUT_SECONDS
            )
            statuses.append(answer.status_code)
            stale.append(answer.headers.get("X-Dependency-Proxy-Stale", ""))
        except requests.RequestException as exc:
            statuses.append(0)
            stale.append(type(exc).__name__)
        seconds.append(time.monotonic() - started)
        session.close()
    return seconds, statuses, stale


def measure(
    make_cache: t.Callable[[str, str], h.Cache],
    upstream: Registry,
    image: h.SeededImage,
    count: int,
    work: Path,
) -> dict[str, dict[str, t.Any]]:
    results: dict[str, dict[str, t.Any]] = {}
    for state in STATES:
        front = Front(upstream)
        cache = make_cache(front.url, state)
        try:
            cache.fresh()
            h.pull(cache, image, work / "cold")
            h.wait_cached(cache, image)
            cache.auth_headers(image)  # the token, before upstream goes away
            front.set(state)
            mark = front.requests_seen()
            seconds, statuses, stale = manifest_gets(cache, image, count)
            try:
                pull: float | str = h.pull(cache, image, work / state)
            except h.BenchError as exc:
                pull = f"failed: {str(exc).splitlines()[0][:80]}"
            results[state] = {
                "seconds": seconds,
                "statuses": statuses,
                "stale": stale,
                "upstream_requests": front.requests_seen() - mark,
                "pull": pull,
            }
        finally:
            cache.stop()
            front.close()
    return results


def render(results: dict[str, dict[str, dict[str, t.Any]]], seconds: float) -> str:
    lines = [
        "# Cached-tag pulls while upstream rate-limits or is dead",
        "",
        "`python benchmarks/outage.py`: manifest GETs of a cached tag, one after another,",
        "then a skopeo pull of the image, per upstream state. Upstream requests are those",
        "the front answered (a dead upstream answers none; see the timings). Each GET",
        "is a new connection; ours runs two gunicorn workers, and each learns of a",
        "`429` or a dead upstream on its own.",
        "",
        "| cache | upstream | GETs | first GET, s | median GET, s | slowest GET, s | statuses | "
        "upstream requests | skopeo pull, s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, states in results.items():
        for state, row in states.items():
            times = row["seconds"]
            statuses = ", ".join(
                f"{code}×{row['statuses'].count(code)}" for code in sorted(set(row["statuses"]))
            )
            pull = row["pull"]
            lines.append(
                f"| {label} | {state} | {len(times)} | {times[0]:.3f} | "
                f"{statistics.median(times):.3f} | {max(times):.3f} | {statuses} | "
                f"{row['upstream_requests'] if state != 'dead' else 'n/a'} | "
                f"{pull if isinstance(pull, str) else f'{pull:.2f}'} |"
            )
    lines += ["", f"Run time: {seconds:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per state")
    parser.add_argument("--requests", type=int, help="manifest GETs per state for ours")
    args = parser.parse_args(argv)
    ours_count = args.requests or (4 if args.quick else 10)
    distribution_count = min(ours_count, 2 if args.quick else 3)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-outage-")))
        processes = ProcessFactory(work / "logs")
        stack.callback(processes.stop_all)
        upstream = Registry(processes, work / "upstream").start()
        image = h.small_image("bench/outage", "bench-outage")
        h.push(image, upstream.url)
        template = h.seed_template(work / "template", upstream.url)

        results: dict[str, dict[str, dict[str, t.Any]]] = {}
        results["ours"] = measure(
            lambda url, state: h.Ours(
                processes,
                work / f"ours-{state}",
                template=template,
                upstream_url=url,
                workers=WORKERS,
                threads=8,
            ),
            upstream,
            image,
            ours_count,
            work / "pulls-ours",
        )
        results["distribution"] = measure(
            lambda url, state: h.Distribution(processes, work / f"distribution-{state}", url),
            upstream,
            image,
            distribution_count,
            work / "pulls-distribution",
        )
    text = render(results, time.monotonic() - started)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "outage.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
