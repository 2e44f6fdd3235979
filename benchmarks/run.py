#!/usr/bin/env python
"""Benchmark flask-dependency-proxy against CNCF distribution in proxy mode.

Both caches proxy the same upstream (``docker-registry``) and are measured with the
same clients (skopeo, wrk, curl), alternating, over several repetitions. See
``benchmarks/README.md`` for what each scenario measures.

    python benchmarks/run.py                 # full run, 5 repetitions (~25-35 minutes)
    python benchmarks/run.py --quick         # smaller images, 1 repetition (< 5 minutes)
    python benchmarks/run.py --only 4,5 --profile

The Markdown table goes to stdout and to ``benchmarks/results/<name>.md`` (``latest``
for a full run, ``quick`` for ``--quick``), with ``<name>.json`` and ``<name>.png``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import functools
import os
import platform as python_platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import typing as t
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(REPO_ROOT), str(BENCH_DIR)]

import harness as h  # noqa: E402
import report  # noqa: E402
import requests  # noqa: E402

from flask_dependency_proxy.cache.usage import (  # noqa: E402
    FLUSH_SECONDS as USAGE_FLUSH_SECONDS,
)
from tests.support import postgres  # noqa: E402
from tests.support.clients import Skopeo  # noqa: E402
from tests.support.crowd import Crowd  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402
from tests.support.processes import ProcessFactory, wait_for  # noqa: E402
from tests.support.registry import AccessRecord, Registry, TokenAuth  # noqa: E402
from tests.support.seaweedfs import SeaweedFS, seaweedfs_unavailable  # noqa: E402
from tests.support.tokenserver import TokenServer  # noqa: E402

MiB = h.MiB
GiB = 1024 * MiB
SCENARIOS = (1, 2, 3, 4, 5, 6, 7, 8, 9)


@dataclasses.dataclass(frozen=True)
class Settings:
    quick: bool
    repetitions: int
    large_size: int
    huge_size: int | None
    load_seconds: float
    downloads: int
    concurrency: int
    #: Scenario 9: clients of the herd and the size of its image's layer.
    herd_clients: int
    herd_size: int
    workers: int
    threads: int
    quiet_wait: float
    profile: bool
    only: tuple[int, ...]
    #: ``DEPENDENCY_PROXY_*`` settings given with ``--set``, for every platform of ours.
    platform_env: tuple[tuple[str, str], ...] = ()
    #: gunicorn worker model of ours: ``gevent`` (the shipped configuration) or ``gthread``.
    serving: str = "gevent"
    #: Scenario 9's layouts: ``one``, ``two`` (hosts) or ``both``.
    herd_hosts: str = "both"

    @property
    def large_label(self) -> str:
        return _size_label(self.large_size)

    @property
    def memory_label(self) -> str:
        return _size_label(self.huge_size or self.large_size)


def _size_label(size: int) -> str:
    return f"{size // GiB} GiB" if size % GiB == 0 else f"{size // MiB} MiB"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kinds(records: list[AccessRecord]) -> collections.Counter[str]:
    """Upstream requests by method and kind: ``GET blobs``, ``HEAD manifests``, ``GET /v2/``."""
    return collections.Counter(f"{r.method} {r.kind or r.path}" for r in records)


def kinds_text(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{key} ×{n}" for key, n in sorted(counter.items())) or "none"


def get_bytes(records: list[AccessRecord]) -> int:
    return sum(r.size for r in records if r.method == "GET" and r.status in (200, 206))


class Bench:
    def __init__(self, settings: Settings, run_dir: Path) -> None:
        self.s = settings
        self.run_dir = run_dir
        self.processes = ProcessFactory(run_dir / "logs")
        self.rows: list[report.Row] = []
        self.details: dict[str, list[str]] = collections.defaultdict(list)
        self.interference: dict[str, float | None] = {}
        self.timings: dict[str, float] = {}
        self.profiles: dict[str, str] = {}
        self._stoppers: list[t.Callable[[], None]] = []
        #: Repetitions that could not be measured (a pull failed, a server answered an error).
        self.failures: list[str] = []
        self.profile_dir = BENCH_DIR / "results" / "profiles"

    # -- helpers -------------------------------------------------------------------------

    def row(self, *args: t.Any, **kwargs: t.Any) -> report.Row:
        row = report.Row(*args, **kwargs)
        self.rows.append(row)
        return row

    @staticmethod
    def rotate(items: t.Sequence[t.Any], rep: int) -> list[t.Any]:
        """Alternate who goes first from one repetition to the next."""
        shift = rep % len(items)
        return list(items[shift:]) + list(items[:shift])

    def each_rep(
        self, name: str, body: t.Callable[[int], None], *, limit: int | None = None
    ) -> None:
        """Run ``body`` once per repetition (at most ``limit`` times); a failed repetition
        is reported and skipped, the others still count."""
        for rep in range(min(self.s.repetitions, limit or self.s.repetitions)):
            try:
                body(rep)
            except h.BenchError as exc:
                self.failures.append(f"{name}, repetition {rep + 1}: {exc}")
                log(f"  rep {rep + 1} failed: {str(exc).splitlines()[0]}")

    def quiet(self) -> None:
        if self.s.quiet_wait > 0:
            share = h.wait_quiet(self.s.quiet_wait)
            if share is not None and share >= 0.10:
                log(f"  other processes still use {share:.0%} of the CPU; measuring anyway")

    def profiled(self, pid: int, name: str) -> t.ContextManager[t.Any]:
        if not self.s.profile:
            return _Null()
        return h.PySpy(pid, self.profile_dir, name)

    def summarize_profile(self, name: str) -> None:
        summary = h.summarize_collapsed(self.profile_dir / f"{name}.txt")
        (self.profile_dir / f"{name}.top.txt").write_text(summary + "\n")
        self.profiles[name] = summary

    def stop_all(self) -> None:
        for stop in reversed(self._stoppers):
            try:
                stop()
            except Exception:  # keep stopping the rest
                traceback.print_exc()
        self.processes.stop_all()

    # -- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        started = time.monotonic()
        log("starting the upstream registry and seeding images")
        self.upstream = Registry(self.processes, self.run_dir / "upstream").start()
        images_dir = self.run_dir / "images"
        self.small = h.small_image("library/small")
        self.multi = h.multiarch_index("library/multi")
        self.large = h.build_large_image(
            images_dir, "bench-large", self.s.large_size, "library/large"
        )
        self.huge = None
        if self.s.huge_size and 6 in self.s.only:
            self.huge = h.build_large_image(
                images_dir, "bench-huge", self.s.huge_size, "library/huge"
            )
        for image in (self.small, self.multi, self.large, self.huge):
            if image is not None:
                h.push(image, self.upstream.url)
                if image.blobs[-1].path is not None:
                    image.blobs[-1].path.unlink()  # upstream has it now; save the disk space
        self.template = h.seed_template(self.run_dir / "template", self.upstream.url)
        self.dist = h.Distribution(self.processes, self.run_dir / "distribution", self.upstream.url)
        self.ours = self.make_ours("ours", self.upstream.url)
        self.timings["setup"] = time.monotonic() - started

    def make_ours(self, name: str, upstream_url: str, **env: str) -> h.Ours:
        return h.Ours(
            self.processes,
            self.run_dir / name,
            template=self.template,
            upstream_url=upstream_url,
            workers=self.s.workers,
            threads=self.s.threads,
            serving=self.s.serving,
            extra_env={**dict(self.s.platform_env), **env},
            name=name,
        )

    # -- scenarios -----------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        plan: list[tuple[tuple[int, ...], str, t.Callable[[], None]]] = [
            ((1, 2), "1-2 cold and warm pulls", self.pulls),
            ((3,), "3 concurrent cold pulls", self.concurrent),
            ((5,), "5 cached blob throughput", self.throughput),
            ((4,), "4 warm manifest requests", self.manifests),
            ((6,), "6 worker memory", self.memory),
            ((7,), "7 token upstream", self.tokens),
            ((8,), "8 slow and idle clients", self.crowds),
            ((9,), "9 herd", self.herd),
        ]
        for numbers, name, step in plan:
            if not set(numbers) & set(self.s.only):
                continue
            log(f"scenario {name}")
            before = len(self.rows)
            started = time.monotonic()
            self.quiet()
            monitor = h.ForeignCpu()
            try:
                with monitor:
                    step()
            except Exception as exc:  # one broken scenario must not lose the others
                log(f"  failed: {exc}")
                traceback.print_exc()
                for row in self.rows[before:]:
                    row.error = row.error or f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                if len(self.rows) == before:
                    self.row(name, "scenario", "", error=f"{type(exc).__name__}: {exc}"[:300])
            self.interference[name] = monitor.share
            self.timings[name] = time.monotonic() - started

    def pulls(self) -> None:
        """1 and 2: cold then warm pull of the large image (and the multi-arch index)."""
        label = self.s.large_label
        caches: list[h.Cache] = [self.ours, self.dist]
        cold = self.row(
            "1 cold pull",
            f"wall time, {label} image",
            "s",
            goal=report.Goal("≤ 1.0 × distribution", "ratio_max", 1.0),
        )
        cold_bytes = self.row(
            "1 cold pull",
            "upstream bytes",
            "× image size",
            goal=report.Goal("1.00 × image size", "worst_max", 1.001),
        )
        cold_requests = self.row("1 cold pull", "upstream requests", "requests")
        cold_logins = self._login_rows("1 cold pull", f"wall time, {label} image")
        cold_multi = self.row("1 cold pull", "wall time, multi-arch index (--all)", "s")
        warm = self.row(
            "2 warm pull",
            f"wall time, {label} image",
            "s",
            goal=report.Goal("≤ 1.0 × distribution", "ratio_max", 1.0),
        )
        warm_requests = self.row("2 warm pull", "upstream requests", "requests")
        warm_multi = self.row("2 warm pull", "wall time, multi-arch index (--all)", "s")
        warm_logins = self._login_rows("2 warm pull", f"wall time, {label} image")
        token_requests = {
            login: self.row(
                "2 warm pull",
                f"token request at /jwt/auth, {login} (median of 10)",
                "ms",
                note="ours only: distribution runs without auth",
            )
            for login in self.ours.TOKEN_LOGINS
        }
        pulls_dir = self.run_dir / "pulls"

        def one(rep: int) -> None:
            order = self.rotate(caches, rep)
            for cache in order:
                cache.fresh()
            for cache in order:
                mark = self.upstream.mark()
                wall = h.pull(cache, self.large, pulls_dir / cache.label)
                h.wait_cached(cache, self.large)  # the reference stores in the background
                h.settle_upstream(self.upstream)
                records = self.upstream.access_log(mark)
                self._add(cold, cache, wall)
                self._add(cold_bytes, cache, get_bytes(records) / self.large.total_bytes)
                self._add(cold_requests, cache, len(records))
                self.details[f"1 cold pull, upstream requests ({cache.label})"] = [
                    kinds_text(kinds(records))
                ]
            # Ours again, into an empty cache, with each password login; the reference has
            # no auth, so its cold pull above is the one to compare with.
            for row, client in self.rotate(cold_logins, rep):
                self.ours.fresh()
                self._add(
                    row, self.ours, h.pull(self.ours, self.large, pulls_dir / "ours", client=client)
                )
                h.wait_cached(self.ours, self.large)
                row.dist.append(cold.dist[-1])
            for cache in order:
                self._add(
                    cold_multi,
                    cache,
                    h.pull(cache, self.multi, pulls_dir / cache.label, all_platforms=True),
                )
                h.wait_cached(cache, self.multi)
            for cache in order:
                mark = self.upstream.mark()
                wall = h.pull(cache, self.large, pulls_dir / cache.label)
                h.settle_upstream(self.upstream, quiet=0.1)
                records = self.upstream.access_log(mark)
                self._add(warm, cache, wall)
                self._add(warm_requests, cache, len(records))
                self.details[f"2 warm pull, upstream requests ({cache.label})"] = [
                    kinds_text(kinds(records))
                ]
            for cache in order:
                self._add(
                    warm_multi,
                    cache,
                    h.pull(cache, self.multi, pulls_dir / cache.label, all_platforms=True),
                )
            for row, client in self.rotate(warm_logins, rep):
                for cache in order:  # the reference has no auth: the same pull as above
                    self._add(
                        row,
                        cache,
                        h.pull(
                            cache,
                            self.large,
                            pulls_dir / cache.label,
                            client=client if cache is self.ours else None,
                        ),
                    )
            for login, row in token_requests.items():
                row.ours.append(self.ours.token_request_ms(login, self.large))
            log(
                f"  rep {rep + 1}: cold {cold.ours[-1]:.2f}/{cold.dist[-1]:.2f} s, "
                f"warm {warm.ours[-1]:.2f}/{warm.dist[-1]:.2f} s (ours/distribution); "
                "token requests "
                + ", ".join(
                    f"{login} {row.ours[-1]:.1f} ms" for login, row in token_requests.items()
                )
            )

        self.each_rep("1-2 cold and warm pulls", one)
        if self.s.profile:
            self.ours.fresh()
            self.h_token_warmup()
            with self.profiled(self.ours.master_pid, "pull-cold"):
                h.pull(self.ours, self.large, pulls_dir / "profiled")
            with self.profiled(self.ours.master_pid, "pull-warm"):
                h.pull(self.ours, self.large, pulls_dir / "profiled")
            self.summarize_profile("pull-cold")
            self.summarize_profile("pull-warm")

    def h_token_warmup(self) -> None:
        """One request per worker so a profile shows steady state, not first-request setup."""
        h.load(
            self.ours.manifest_url(self.small),
            {**self.ours.auth_headers(self.small), "Accept": h.MANIFEST_ACCEPT},
            method="GET",
            duration=0.5,
        )

    def _add(self, row: report.Row, cache: h.Cache, value: float) -> None:
        (row.ours if cache.label.startswith("ours") else row.dist).append(value)

    def _login_rows(self, scenario: str, what: str) -> list[tuple[report.Row, Skopeo]]:
        """Rows of a pull repeated by ours with the two password logins: the password
        sent on every token request (``skopeo login``), and the identity token a login
        with offline access answers (what ``docker login`` stores)."""
        return [
            (
                self.row(
                    scenario,
                    f"{what}, logged in with the password",
                    "s",
                    note="ours: every token request checks the password (scrypt)",
                ),
                self.ours.password_skopeo,
            ),
            (
                self.row(
                    scenario,
                    f"{what}, identity token from a password login",
                    "s",
                    goal=report.Goal("≤ 0.9 × distribution", "ratio_max", 0.9),
                    note="ours: every token request is a POST refresh, no password hash",
                ),
                self.ours.identity_skopeo,
            ),
        ]

    def concurrent(self) -> None:
        """3: N concurrent cold pulls of the large image into an empty cache."""
        n = self.s.concurrency
        gets = self.row(
            f"3 {n} concurrent cold pulls",
            "upstream GETs per blob (max)",
            "GETs",
            goal=report.Goal("1", "worst_max", 1),
        )
        layer_gets = self.row(
            f"3 {n} concurrent cold pulls", "upstream GETs of the large layer", "GETs"
        )
        upstream_bytes = self.row(f"3 {n} concurrent cold pulls", "upstream bytes", "× image size")
        wall = self.row(f"3 {n} concurrent cold pulls", f"wall time until all {n} finish", "s")
        wall_logins = self._login_rows(
            f"3 {n} concurrent cold pulls", f"wall time until all {n} finish"
        )
        caches: list[h.Cache] = [self.ours, self.dist]
        layer = self.large.largest_blob.digest

        def one(rep: int) -> None:
            for cache in self.rotate(caches, rep):
                cache.fresh()
                mark = self.upstream.mark()
                targets = [self.run_dir / "concurrent" / f"{cache.label}-{i}" for i in range(n)]
                elapsed = h.concurrent_pulls(cache, self.large, targets)
                h.wait_cached(cache, self.large)
                h.settle_upstream(self.upstream)
                records = self.upstream.access_log(mark)
                per_blob = collections.Counter(
                    r.reference for r in records if r.method == "GET" and r.kind == "blobs"
                )
                self._add(gets, cache, max(per_blob[b.digest] for b in self.large.blobs))
                self._add(layer_gets, cache, per_blob[layer])
                self._add(upstream_bytes, cache, get_bytes(records) / self.large.total_bytes)
                self._add(wall, cache, elapsed)
                self.details[f"3 concurrent cold pulls, upstream requests ({cache.label})"] = [
                    kinds_text(kinds(records)),
                    "GETs per blob: "
                    + ", ".join(
                        f"{b.media_type.rsplit('.', 1)[-1]} {b.digest[7:19]}: {per_blob[b.digest]}"
                        for b in self.large.blobs
                    ),
                ]
            # Ours again with each password login; the reference has no auth.
            for row, client in self.rotate(wall_logins, rep):
                self.ours.fresh()
                targets = [self.run_dir / "concurrent" / f"ours-login-{i}" for i in range(n)]
                self._add(
                    row,
                    self.ours,
                    h.concurrent_pulls(self.ours, self.large, targets, client=client),
                )
                h.wait_cached(self.ours, self.large)
                row.dist.append(wall.dist[-1])
            log(
                f"  rep {rep + 1}: layer GETs {layer_gets.ours[-1]:.0f}/{layer_gets.dist[-1]:.0f}, "
                f"wall {wall.ours[-1]:.2f}/{wall.dist[-1]:.2f} s, with the password "
                f"{wall_logins[0][0].ours[-1]:.2f} s, with an identity token "
                f"{wall_logins[1][0].ours[-1]:.2f} s"
            )

        self.each_rep("3 concurrent cold pulls", one)

    def _ensure_cached(self, cache: h.Cache, image: h.SeededImage) -> None:
        """Start ``cache`` if needed and pull ``image`` through it once. A failed pull is
        reported (it is a finding) and tried once more, so the scenario still runs."""
        if not cache.is_running():
            cache.fresh()
        for attempt in (1, 2):
            if cache.has_blobs(image):
                return
            try:
                h.pull(cache, image, self.run_dir / "pulls" / cache.label)
                h.wait_cached(cache, image)
            except h.BenchError as exc:
                self.failures.append(f"warming {cache.label} up with {image.repository}: {exc}")
                log(f"  warm-up pull failed: {str(exc).splitlines()[0]}")
                if attempt == 2:
                    raise

    def throughput(self) -> None:
        """5: one client downloading the cached large blob; nginx serves the same file."""
        for cache in (self.ours, self.dist):
            self._ensure_cached(cache, self.large)
        blob = self.large.largest_blob
        root = self.run_dir / "nginx-root"
        root.mkdir(exist_ok=True)
        served = root / "blob"
        served.unlink(missing_ok=True)
        try:
            os.link(self.ours.blob_file(blob.digest), served)  # same inode, same page cache
        except OSError:
            shutil.copyfile(self.ours.blob_file(blob.digest), served)
        nginx = h.Nginx(self.processes, self.run_dir / "nginx", root).start()
        self._stoppers.append(nginx.process.stop)
        row = self.row(
            "5 cached blob throughput",
            f"{self.s.large_label} blob, one client",
            "MB/s",
            ref_label="nginx sendfile",
            goal=report.Goal("≥ 0.8 × nginx sendfile", "ref_ratio_min", 0.8),
        )
        cpu = self.row(
            "5 cached blob throughput",
            f"server CPU time per GiB sent, {self.s.large_label} blob",
            "s",
            ref_label="nginx sendfile",
            note="user + system time of the serving processes, including the loopback "
            "TCP work the kernel charges to the sender",
        )
        sources: list[tuple[str, str, dict[str, str]]] = [
            (
                "ours",
                self.ours.blob_url(self.large, blob.digest),
                self.ours.auth_headers(self.large),
            ),
            ("distribution", self.dist.blob_url(self.large, blob.digest), {}),
            ("nginx", nginx.url("blob"), {}),
        ]
        nginx_pid = nginx.process.pid
        assert nginx_pid is not None
        servers: dict[str, t.Callable[[], list[int]]] = {
            "ours": lambda: h.children_of(self.ours.master_pid),
            "distribution": self.dist.server_pids,
            "nginx": lambda: [nginx_pid, *h.children_of(nginx_pid)],
        }
        for _, url, headers in sources:  # page cache and connections warm
            h.download(url, headers)

        def one(rep: int) -> None:
            for label, url, headers in self.rotate(sources, rep):
                pids = servers[label]()
                column = {"ours": "ours", "distribution": "dist", "nginx": "ref"}[label]
                used = h.cpu_seconds(pids)
                for _ in range(self.s.downloads):
                    size, seconds = h.download(url, headers)
                    if size != blob.size:
                        raise h.BenchError(f"{label} sent {size} of {blob.size} bytes")
                    getattr(row, column).append(size / seconds / 1e6)
                used = h.cpu_seconds(pids) - used
                getattr(cpu, column).append(used / (self.s.downloads * blob.size / GiB))
            log(
                f"  rep {rep + 1}: {statistics.median(row.ours):.0f} / "
                f"{statistics.median(row.dist):.0f} / {statistics.median(row.ref):.0f} MB/s "
                "(ours / distribution / nginx)"
            )

        self.each_rep("5 cached blob throughput", one)
        if self.s.profile:
            with self.profiled(self.ours.master_pid, "blob-warm"):
                for _ in range(5):
                    h.download(sources[0][1], sources[0][2])
            self.summarize_profile("blob-warm")

    def manifests(self) -> None:
        """4: warm manifest GET and HEAD by tag, 8 connections, both tag-check settings."""
        self.ours30 = self.make_ours(
            "ours-interval30", self.upstream.url, DEPENDENCY_PROXY_TAG_CHECK_INTERVAL="30"
        )
        self.ours30.fresh()
        for cache in (self.ours, self.dist):
            self._ensure_cached(cache, self.small)
        self._ensure_cached(self.ours30, self.small)
        targets: list[tuple[str, h.Cache]] = [
            ("ours", self.ours),
            ("ours30", self.ours30),
            ("dist", self.dist),
        ]
        samples: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        upstream_per_request: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        latencies: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        problems: list[str] = []
        #: The load tool each method ran with: GETs use wrk only where it is installed.
        tools: dict[str, str] = {}

        def headers(cache: h.Cache) -> dict[str, str]:
            return {**cache.auth_headers(self.small), "Accept": h.MANIFEST_ACCEPT}

        for _, cache in targets:  # cached, and answering 200 to what the load sends
            answer = requests.get(
                cache.manifest_url(self.small), headers=headers(cache), timeout=30
            )
            if (
                answer.status_code != 200
                or answer.headers.get("Docker-Content-Digest") != self.small.digest
            ):
                raise h.BenchError(f"{cache.label}: manifest GET answered {answer.status_code}")

        # The upstream itself, as a reference: at interval 0 both caches ask it on every
        # request, so it bounds them.
        loads: list[tuple[str, str, dict[str, str]]] = [
            (key, cache.manifest_url(self.small), headers(cache)) for key, cache in targets
        ]
        loads.append(
            (
                "upstream",
                f"{self.upstream.url}/v2/{self.small.repository}/manifests/{self.small.tag}",
                {"Accept": h.MANIFEST_ACCEPT},
            )
        )

        def one(rep: int) -> None:
            for method in ("GET", "HEAD"):
                for key, url, load_headers in self.rotate(loads, rep):
                    if key != "upstream":  # tokens are renewed before they expire
                        load_headers = headers(dict(targets)[key])
                    mark = self.upstream.mark()
                    result = h.load(url, load_headers, method=method, duration=self.s.load_seconds)
                    tools[method] = "wrk" if result.tool == "wrk" else "loadgen.py"
                    if key == "upstream":
                        samples[key, method].append(result.requests_per_second)
                        continue
                    upstream = len(self.upstream.access_log(mark))
                    samples[key, method].append(result.requests_per_second)
                    if result.requests:
                        upstream_per_request[key, method].append(upstream / result.requests)
                    if result.latency_p50_ms is not None:
                        latencies[key, method].append(result.latency_p50_ms)
                    if result.non_2xx or result.socket_errors:
                        problems.append(
                            f"{key} {method}: {result.non_2xx} non-2xx, "
                            f"{result.socket_errors} socket errors ({result.tool})"
                        )
            log(
                "  rep {}: GET {:.0f}/{:.0f}/{:.0f}, HEAD {:.0f}/{:.0f}/{:.0f} req/s "
                "(ours, ours interval 30, distribution)".format(
                    rep + 1,
                    *(
                        samples[k, m][-1]
                        for m in ("GET", "HEAD")
                        for k in ("ours", "ours30", "dist")
                    ),
                )
            )

        self.each_rep("4 warm manifest requests", one)
        for method in ("GET", "HEAD"):
            tool = tools.get(method, "wrk" if method == "GET" else "loadgen.py")
            for key, setting in (
                ("ours", "tag check on every pull (interval 0, default)"),
                ("ours30", "DEPENDENCY_PROXY_TAG_CHECK_INTERVAL=30"),
            ):
                self.row(
                    "4 warm manifest, 8 connections",
                    f"{method} by tag ({tool}), {setting}",
                    "req/s",
                    ours=samples[key, method],
                    dist=samples["dist", method],
                    ref=samples["upstream", method],
                    ref_label="upstream itself",
                    goal=report.Goal("≥ 1.0 × distribution", "ratio_min", 1.0),
                )
        lines = []
        for (key, method), values in sorted(upstream_per_request.items()):
            lines.append(
                f"{key} {method}: {statistics.median(values):.3f} upstream requests per "
                f"client request, median latency {statistics.median(latencies[key, method]):.1f} ms"
            )
        self.details["4 warm manifest: upstream requests per client request, latency"] = (
            lines + problems
        )
        if self.s.profile:
            for key, cache in targets[:2]:
                name = f"manifest-get-{'interval30' if key == 'ours30' else 'interval0'}"
                with self.profiled(cache.master_pid, name):  # type: ignore[attr-defined]
                    h.load(
                        cache.manifest_url(self.small),
                        headers(cache),
                        method="GET",
                        duration=max(self.s.load_seconds, 5),
                    )
                self.summarize_profile(name)
        self.ours30.stop()

    def crowds(self) -> None:
        """8: a probe's cached manifest GET while slow readers and idle connections are held.

        Slow readers GET the cached large blob through a 4 KiB receive buffer and read
        1 KiB/s; idle connections send nothing; a few slowloris connections send one
        header line every 2 s. The probe asks for the cached small manifest (a valid
        token for ours) every 50 ms with a 5 s timeout.
        """
        for cache in (self.ours, self.dist):
            self._ensure_cached(cache, self.large)
            self._ensure_cached(cache, self.small)
        idle = 200 if self.s.quick else 1000
        crowd_sizes = (20,) if self.s.quick else (50, 200, 1000)
        # Longer than the shipped keepalive (15 s), so the idle connections outlive it.
        hold = 4.0 if self.s.quick else 18.0
        repetitions = min(self.s.repetitions, 2)
        p99: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        p50: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        failed: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        notes: list[str] = []
        for rep in range(repetitions):
            for readers in crowd_sizes:
                for cache in self.rotate([self.ours, self.dist], rep):
                    result = _probe_under_crowd(
                        cache, self.large, self.small, readers=readers, idle=idle, hold=hold
                    )
                    key = (cache.label, readers)
                    p99[key].append(result.p99_ms)
                    p50[key].append(result.p50_ms)
                    failed[key].append(result.failures)
                    notes.append(
                        f"{cache.label}, {readers} slow readers + {idle} idle, rep {rep + 1}: "
                        f"{result.probes} probes, {result.failures} failed, p50 "
                        f"{result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max "
                        f"{result.max_ms:.0f} ms; slow readers still open at the end "
                        f"{result.readers_open}/{readers}; idle connections closed by the "
                        f"server during the {hold:g} s hold: {result.idle_closed}"
                    )
                    log(f"  {notes[-1]}")
        for readers in crowd_sizes:
            setting = f"{readers} slow readers + {idle} idle connections"
            self.row(
                "8 slow and idle clients",
                f"probe p99, cached manifest GET, {setting}",
                "ms",
                ours=p99["ours", readers],
                dist=p99["distribution", readers],
                goal=report.Goal("≤ 2 × distribution", "ratio_max", 2.0)
                if readers == 200
                else None,
            )
            if readers == 200:
                self.row(
                    "8 slow and idle clients",
                    f"probe p99 of ours, {setting}",
                    "ms",
                    ours=p99["ours", readers],
                    goal=report.Goal("< 100 ms", "worst_max", 100.0),
                    chart=False,
                )
            self.row(
                "8 slow and idle clients",
                f"probe p50, {setting}",
                "ms",
                ours=p50["ours", readers],
                dist=p50["distribution", readers],
            )
            self.row(
                "8 slow and idle clients",
                f"failed or timed-out probes (5 s), {setting}",
                "count",
                ours=failed["ours", readers],
                dist=failed["distribution", readers],
                chart=False,
            )
        self.details["8 slow and idle clients"] = notes

    def memory(self) -> None:
        """6: RSS growth of the serving process while one client streams the big blob."""
        image = self.huge or self.large
        blob = image.largest_blob
        label = self.s.memory_label
        # A ratio of two growths near zero says nothing: these stay out of the chart.
        cold = self.row(
            "6 memory",
            f"RSS growth of the serving worker, {label} blob, cold",
            "MiB",
            goal=report.Goal("< 50 MiB", "worst_max", 50),
            chart=False,
        )
        warm = self.row(
            "6 memory",
            f"RSS growth of the serving worker, {label} blob, warm",
            "MiB",
            goal=report.Goal("< 50 MiB", "worst_max", 50),
            chart=False,
        )
        cold_rate = self.row("6 memory", f"cold blob throughput, {label} blob (one client)", "MB/s")
        warm_rate = self.row("6 memory", f"warm blob throughput, {label} blob (one client)", "MB/s")
        peaks: dict[str, list[float]] = collections.defaultdict(list)
        caches: list[h.Cache] = [self.ours, self.dist]

        def one(rep: int) -> None:
            for cache in self.rotate(caches, rep):
                cache.fresh()
                # Every worker has served requests before, so first-request setup is not counted.
                h.load(
                    cache.manifest_url(self.small),
                    {**cache.auth_headers(self.small), "Accept": h.MANIFEST_ACCEPT},
                    method="GET",
                    duration=0.5,
                )
                headers = cache.auth_headers(image)
                pids = cache.server_pids()
                url = cache.blob_url(image, blob.digest)
                with h.RssSampler(pids) as sampler:
                    size, seconds = h.download(url, headers, timeout=600)
                self._check_size(cache, size, blob)
                self._add(cold, cache, sampler.growth_mib())
                self._add(cold_rate, cache, size / seconds / 1e6)
                peaks[f"{cache.label} cold"].append(sampler.peak_mib())
                wait_for(
                    functools.partial(cache.has_blob, blob), timeout=120, what="blob committed"
                )
                with h.RssSampler(pids) as sampler:
                    size, seconds = h.download(url, headers, timeout=600)
                self._check_size(cache, size, blob)
                self._add(warm, cache, sampler.growth_mib())
                self._add(warm_rate, cache, size / seconds / 1e6)
                peaks[f"{cache.label} warm"].append(sampler.peak_mib())
            log(
                f"  rep {rep + 1}: cold growth {cold.ours[-1]:.1f}/{cold.dist[-1]:.1f} MiB, "
                f"warm {warm.ours[-1]:.1f}/{warm.dist[-1]:.1f} MiB"
            )

        self.each_rep("6 worker memory", one)
        self.details["6 memory: peak RSS of the serving process (MiB)"] = [
            f"{key}: {report.cell(values, 'MiB')}" for key, values in sorted(peaks.items())
        ]
        if self.s.profile:
            self.ours.fresh()
            self.h_token_warmup()
            headers = self.ours.auth_headers(image)
            with self.profiled(self.ours.master_pid, "blob-cold"):
                h.download(self.ours.blob_url(image, blob.digest), headers, timeout=600)
            self.summarize_profile("blob-cold")

    def herd(self) -> None:
        """9: a herd of asyncio clients pulls one image at the same moment, cold then warm,
        from one host and from two hosts; the warm herd's blob GETs also against nginx."""
        n = self.s.herd_clients
        label = _size_label(self.s.herd_size)
        scenario = f"9 herd of {n} clients, {label} image"
        image = h.build_large_image(
            self.run_dir / "images", "bench-herd", self.s.herd_size, "library/herd"
        )
        h.push(image, self.upstream.url)
        layouts: dict[str, dict[str, report.Row]] = {}
        for layout in ("one host", "two hosts"):
            layouts[layout] = {
                "cold": self.row(
                    scenario, f"{layout}: cold herd, wall time until the last byte", "s"
                ),
                "warm": self.row(
                    scenario, f"{layout}: warm herd, wall time until the last byte", "s"
                ),
                "ratio": self.row(
                    scenario,
                    f"{layout}: cold herd / warm herd wall time",
                    "×",
                    goal=report.Goal("≤ 1.1", "worst_max", 1.1),
                    chart=False,
                ),
                "failed": self.row(
                    scenario,
                    f"{layout}: failed clients, cold and warm herds",
                    "clients",
                    goal=report.Goal("0", "worst_max", 0),
                    chart=False,
                ),
                "gets": self.row(
                    scenario,
                    f"{layout}: upstream GETs per blob, cold herd (max)",
                    "GETs",
                    goal=report.Goal("1", "worst_max", 1),
                ),
                "rate": self.row(
                    scenario, f"{layout}: warm herd, aggregate blob throughput", "MB/s"
                ),
            }
        versus_nginx = self.row(
            scenario,
            "one host: warm blob GETs of the herd, aggregate throughput",
            "MB/s",
            ref_label="nginx sendfile",
            goal=report.Goal("≥ 0.8 × nginx sendfile", "ref_ratio_min", 0.8),
        )
        versus_nginx_cpu = self.row(
            scenario,
            "one host: warm blob GETs of the herd, server CPU time per GiB sent",
            "s",
            ref_label="nginx sendfile",
            note="user + system time of the serving processes, including the loopback "
            "TCP work the kernel charges to the sender",
        )
        notes = self.details[f"9 herd of {n} clients"]
        herd_dir = self.run_dir / "herd"

        def measure(
            layout: str,
            cache: t.Any,
            targets: t.Callable[[h.SeededImage], list[dict[str, t.Any]]],
            stored: t.Callable[[], bool],
        ) -> None:
            rows = layouts[layout]
            # The same herd pulls the small image first, twice, the second time after a
            # worker's usage counters are due (a worker's first flush imports SQLAlchemy's
            # dialects), so every worker has served requests (statements compiled, pools
            # grown, first flushes done) and the cold herd measures the miss, not a
            # process's first requests.
            for attempt in (1, 2):
                if attempt == 2:
                    time.sleep(USAGE_FLUSH_SECONDS + 0.5)
                warm_up = h.herd(targets(self.small), clients=n)
                if warm_up.failed:
                    notes.append(
                        f"{layout}, {cache.label}, warm-up {attempt} with {self.small.repository}:"
                        f" {warm_up.failed} failed: {'; '.join(warm_up.errors)}"
                    )
            mark = self.upstream.mark()
            cold = h.herd(targets(image), clients=n)
            wait_for(stored, timeout=300, interval=0.1, what=f"{cache.label} stored the herd image")
            h.settle_upstream(self.upstream)
            records = self.upstream.access_log(mark)
            per_blob = collections.Counter(
                r.reference for r in records if r.method == "GET" and r.kind == "blobs"
            )
            warm = h.herd(targets(image), clients=n)
            self._add(rows["cold"], cache, cold.wall)
            self._add(rows["warm"], cache, warm.wall)
            self._add(rows["ratio"], cache, cold.wall / warm.wall if warm.wall else 0.0)
            self._add(rows["failed"], cache, cold.failed + warm.failed)
            self._add(rows["gets"], cache, max(per_blob[b.digest] for b in image.blobs))
            self._add(rows["rate"], cache, warm.throughput_mb_s)
            for name, result in (("cold", cold), ("warm", warm)):
                notes.append(
                    f"{layout}, {cache.label}, {name}: last client {result.wall:.2f} s, median "
                    f"client {result.median_done or 0:.2f} s, {result.failed} failed, "
                    f"{result.throughput_mb_s:.0f} MB/s"
                    + (
                        "; per host (median manifest/first layer byte/done, last done): "
                        + ", ".join(
                            "/".join(f"{v or 0:.2f}" for v in host) + " s"
                            for host in result.per_target
                        )
                        if result.per_target
                        else ""
                    )
                    + (f"; errors: {'; '.join(result.errors)}" if result.errors else "")
                )
            notes.append(
                f"{layout}, {cache.label}, cold: upstream requests {kinds_text(kinds(records))}"
            )
            log(f"  {notes[-3]}")
            log(f"  {notes[-2]}")

        def blobs_herd(
            label: str,
            url: t.Callable[[h.BlobFile], str],
            headers: dict[str, str],
            servers: t.Callable[[], list[int]],
        ) -> tuple[float, float]:
            """The herd GETs the image's blobs only: aggregate MB/s and the server's CPU
            seconds per GiB sent."""
            spec = [
                {
                    "blobs": {b.digest: {"url": url(b), "size": b.size} for b in image.blobs},
                    "headers": headers,
                }
            ]
            pids = servers()
            used = h.cpu_seconds(pids)
            result = h.herd(spec, clients=n)
            used = h.cpu_seconds(pids) - used
            notes.append(
                f"one host, warm blob GETs only, {label}: last client {result.wall:.2f} s, "
                f"{result.failed} failed, {result.throughput_mb_s:.0f} MB/s, server CPU "
                f"{used:.2f} s"
            )
            log(f"  {notes[-1]}")
            if result.failed:
                raise h.BenchError(
                    f"{label}: {result.failed} of {n} clients failed: {result.errors}"
                )
            return result.throughput_mb_s, used / (result.blob_bytes / GiB)

        nginx_root = herd_dir / "nginx-root"
        nginx_root.mkdir(parents=True, exist_ok=True)
        nginx = h.Nginx(self.processes, herd_dir / "nginx", nginx_root, connections=n + 64).start()
        self._stoppers.append(nginx.process.stop)

        def one_host(rep: int) -> None:
            for cache in self.rotate([self.ours, self.dist], rep):
                cache.fresh()
                measure(
                    "one host",
                    cache,
                    functools.partial(h.herd_targets, cache),
                    functools.partial(cache.has_blobs, image),
                )
            for blob in image.blobs:  # nginx serves the very files ours holds
                served = nginx_root / blob.digest[7:]
                served.unlink(missing_ok=True)
                os.link(self.ours.blob_file(blob.digest), served)
            nginx_pid = nginx.process.pid
            assert nginx_pid is not None
            sources = [
                (
                    "ours",
                    lambda b: self.ours.blob_url(image, b.digest),
                    self.ours.auth_headers(image),
                    lambda: h.children_of(self.ours.master_pid),
                ),
                (
                    "distribution",
                    lambda b: self.dist.blob_url(image, b.digest),
                    {},
                    self.dist.server_pids,
                ),
                (
                    "nginx",
                    lambda b: nginx.url(b.digest[7:]),
                    {},
                    lambda: [nginx_pid, *h.children_of(nginx_pid)],
                ),
            ]
            # Rounds alternate the three, so a burst of load from outside the benchmark
            # does not land on one of them only; each gets the median of its rounds.
            rates: dict[str, list[float]] = collections.defaultdict(list)
            cpus: dict[str, list[float]] = collections.defaultdict(list)
            for round_ in range(2):
                for label, url, headers, servers in self.rotate(sources, rep + round_):
                    rate, cpu = blobs_herd(label, url, headers, servers)
                    rates[label].append(rate)
                    cpus[label].append(cpu)
            for label, column in (("ours", "ours"), ("distribution", "dist"), ("nginx", "ref")):
                getattr(versus_nginx, column).append(statistics.median(rates[label]))
                getattr(versus_nginx_cpu, column).append(statistics.median(cpus[label]))

        if self.s.herd_hosts in ("one", "both"):
            self.each_rep(f"{scenario}, one host", one_host, limit=2)
        if self.s.herd_hosts == "one":
            return
        problem = postgres.available() or seaweedfs_unavailable()
        if problem:
            raise h.BenchError(f"two hosts need PostgreSQL and SeaweedFS: {problem}")
        cluster = PostgresCluster(self.processes)
        weed = SeaweedFS(self.processes, herd_dir / "seaweedfs")
        fleets: list[t.Any] = [
            h.FleetOurs(
                self.processes,
                herd_dir / "ours-fleet",
                cluster=cluster,
                seaweedfs=weed,
                upstream_url=self.upstream.url,
                workers=self.s.workers,
                extra_env=dict(self.s.platform_env),
            ),
            h.FleetDistribution(
                self.processes,
                herd_dir / "distribution-fleet",
                seaweedfs=weed,
                upstream_url=self.upstream.url,
            ),
        ]

        def two_hosts(rep: int) -> None:
            for fleet in self.rotate(fleets, rep):
                fleet.fresh()
                try:
                    measure(
                        "two hosts",
                        fleet,
                        fleet.herd_targets,
                        functools.partial(fleet.has_blobs, image),
                    )
                finally:
                    fleet.stop()

        try:
            cluster.start()
            weed.start()
            self.each_rep(f"{scenario}, two hosts", two_hosts, limit=2)
        finally:
            for stop in (*(fleet.stop for fleet in fleets), weed.stop, cluster.stop):
                try:
                    stop()
                except Exception:  # keep stopping the rest
                    traceback.print_exc()

    @staticmethod
    def _check_size(cache: h.Cache, size: int, blob: h.BlobFile) -> None:
        if size != blob.size:
            raise h.BenchError(f"{cache.label} sent {size} of {blob.size} bytes")

    def tokens(self) -> None:
        """7: token requests to a Docker-Hub-like token server for cold pulls of two images."""
        token_server = TokenServer(
            self.run_dir / "token-server", users={"pusher": "pusher-password"}
        ).start()
        self._stoppers.append(token_server.stop)
        registry = Registry(
            self.processes,
            self.run_dir / "token-upstream",
            name="token-upstream",
            token_auth=TokenAuth(token_server.realm, token_server.bundle_path),
        ).start()
        first = h.small_image("library/small", "bench-token-small")
        second = h.multiarch_index("team/multi", "bench-token-multi")
        for image in (first, second):
            h.push(image, registry.url, credentials=("pusher", "pusher-password"))
        dist = h.Distribution(
            self.processes,
            self.run_dir / "distribution-token",
            registry.url,
            name="distribution-token",
        )
        ours = self.make_ours("ours-token", registry.url)
        total = self.row(
            "7 token upstream", "token requests, cold pulls of 2 images", "token requests"
        )
        per_repo = self.row(
            "7 token upstream",
            "token requests per repository (max)",
            "token requests",
            goal=report.Goal("≤ 1 per repository and token lifetime", "worst_max", 1),
        )
        caches: list[h.Cache] = [ours, dist]

        def one(rep: int) -> None:
            for cache in self.rotate(caches, rep):
                cache.fresh()
                mark = token_server.mark()
                upstream_mark = registry.mark()
                h.pull(cache, first, self.run_dir / "pulls" / cache.label)
                h.pull(cache, second, self.run_dir / "pulls" / cache.label, all_platforms=True)
                h.wait_cached(cache, first)
                h.wait_cached(cache, second)
                h.settle_upstream(registry)
                asked = [r for r in token_server.requests[mark:] if r.status == 200]
                repos = collections.Counter(name for r in asked for name in r.repositories)
                self._add(total, cache, len(asked))
                self._add(per_repo, cache, max(repos.values(), default=0))
                records = registry.access_log(upstream_mark)
                self.details[f"7 token upstream ({cache.label})"] = [
                    "token requests per repository: "
                    + (", ".join(f"{name} ×{n}" for name, n in sorted(repos.items())) or "none"),
                    "upstream requests: "
                    + kinds_text(
                        collections.Counter(
                            f"{r.method} {r.kind or r.path} {r.status}" for r in records
                        )
                    ),
                ]
                cache.stop()
            log(f"  rep {rep + 1}: token requests {total.ours[-1]:.0f}/{total.dist[-1]:.0f}")

        self.each_rep("7 token upstream", one)


@dataclasses.dataclass
class ProbeResult:
    probes: int
    failures: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    readers_open: int
    idle_closed: int


def _probe_under_crowd(
    cache: h.Cache,
    large: h.SeededImage,
    small: h.SeededImage,
    *,
    readers: int,
    idle: int,
    hold: float,
) -> ProbeResult:
    host, _, port = cache.host.rpartition(":")
    blob_path = cache.blob_url(large, large.blobs[-1].digest).split(cache.host, 1)[1]
    # Tokens first: a server whose threads the crowd holds would not hand them out.
    blob_headers = cache.auth_headers(large)
    headers = {**cache.auth_headers(small), "Accept": h.MANIFEST_ACCEPT}
    crowd = Crowd(host, int(port))
    latencies: list[float] = []
    failures = 0
    try:
        crowd.slow_readers(readers, blob_path, blob_headers)
        crowd.idle_connections(idle)
        crowd.slowloris_connections(10)
        time.sleep(1.0)
        session = requests.Session()
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                answer = session.get(cache.manifest_url(small), headers=headers, timeout=5)
                ok = answer.status_code == 200
            except requests.RequestException:
                ok = False
                session = requests.Session()
            elapsed = (time.monotonic() - started) * 1000
            if ok:
                latencies.append(elapsed)
            else:
                failures += 1
            time.sleep(max(0.0, 0.05 - elapsed / 1000))
        readers_open = crowd.readers_open()
        idle_closed = len(crowd.closed_by_server(crowd.idle))
    finally:
        crowd.close()
    # A failed or timed-out probe counts as the 5 s timeout.
    ordered = sorted(latencies + [5000.0] * failures) or [5000.0]

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return ProbeResult(
        probes=len(ordered),
        failures=failures,
        p50_ms=quantile(0.5),
        p99_ms=quantile(0.99),
        max_ms=ordered[-1],
        readers_open=readers_open,
        idle_closed=idle_closed,
    )


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- output ---------------------------------------------------------------------------------


def environment(settings: Settings) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    revision = h.tool_version(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    changed = (
        subprocess.run(
            [
                "git",
                "-C",
                str(REPO_ROOT),
                "diff",
                "--stat",
                "HEAD",
                "--",
                "flask_dependency_proxy",
                "examples",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        .stdout.strip()
        .splitlines()
    )
    if changed:
        revision += f" + uncommitted changes ({changed[-1].strip()})"
    gunicorn = h.tool_version([sys.executable, "-m", "gunicorn", "--version"])
    serving = " ".join(
        [
            "-c examples/gunicorn.conf.py",
            f"--workers {settings.workers}",
            *h.serving_args(settings.serving, settings.threads),
        ]
    )
    registry = h.tool_version(["docker-registry", "--version"])
    clients = ", ".join(h.tool_version(argv) for argv in (["skopeo", "--version"], ["wrk", "-v"]))
    nginx = h.tool_version(["nginx", "-v"])
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"revision {revision}",
        f"- machine: {os.cpu_count()} × {cpu}, Linux {python_platform.release()}, "
        f"Python {python_platform.python_version()}",
        f"- ours: example platform, {gunicorn}, `{serving}` ({settings.serving}), SQLite, "
        "filesystem blob store; clients log in with a personal access token, and in the "
        "rows that say so with the password or the identity token of a password login",
        f"- distribution: {registry}, `proxy: {{remoteurl}}`, filesystem storage, no auth",
        f"- upstream: the same docker-registry binary; clients: {clients}, curl; {nginx}",
        f"- mode: {'--quick' if settings.quick else 'full'}, {settings.repetitions} repetition(s), "
        f"large image {settings.large_label}, memory check {settings.memory_label}, "
        f"{settings.load_seconds:g} s per load run, {settings.downloads} downloads per repetition",
        *(
            [
                f"- scenario 9: {settings.herd_clients} clients of `benchmarks/herd.py` (asyncio,"
                f" one process), one image with a {_size_label(settings.herd_size)} layer; ours'"
                " clients share one pull token per host; two hosts: two platforms of ours on one"
                " PostgreSQL database and one SeaweedFS bucket with `DEPENDENCY_PROXY_PEER_URL`"
                " (presigned redirects on), two distribution instances on one bucket (`s3-aws`,"
                " redirects on)"
            ]
            if 9 in settings.only
            else []
        ),
        *(
            [f"- settings of ours: `{' '.join(f'{k}={v}' for k, v in settings.platform_env)}`"]
            if settings.platform_env
            else []
        ),
    ]


def render(bench: Bench, settings: Settings, chart_name: str | None) -> str:
    parts = [
        "# flask-dependency-proxy vs distribution (proxy mode)",
        "",
        *environment(settings),
        "",
        "Values: median (min–max) over the repetitions. Ratio: median ours / median distribution.",
        "",
        report.markdown_table(bench.rows),
        "",
    ]
    if chart_name:
        parts += [f"![ours / distribution]({chart_name})", ""]
    parts += ["## Details", ""]
    for title, lines in bench.details.items():
        parts.append(f"- {title}:")
        parts += [f"  - {line}" for line in lines]
    if bench.failures:
        parts += ["", "## Failures", ""]
        for failure in bench.failures:
            first, _, rest = failure.partition("\n")
            parts.append(f"- {first}")
            if rest.strip():
                parts += [
                    "",
                    "  ```",
                    *(f"  {line}" for line in rest.strip().splitlines()[-6:]),
                    "  ```",
                ]
    parts += ["", "## Run", ""]
    for name, share in bench.interference.items():
        share_text = "n/a" if share is None else f"{share:.0%}"
        parts.append(
            f"- {name}: {bench.timings.get(name, 0):.0f} s; CPU used by other processes "
            f"on the machine meanwhile: {share_text}"
        )
    parts.append(
        f"- setup (build and push images, seed the platform): {bench.timings.get('setup', 0):.0f} s"
    )
    if bench.profiles:
        parts += ["", "## Profiles (py-spy, busy samples of the gunicorn workers)", ""]
        for name, summary in bench.profiles.items():
            parts += [f"### {name}", "", "```", summary, "```", ""]
    return "\n".join(parts) + "\n"


def parse_args(argv: t.Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description="Benchmark ours against distribution in proxy mode."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller images, no 1 GiB blob, short load runs (< 5 minutes)",
    )
    parser.add_argument("--repetitions", type=int, help="default: 5, or 1 with --quick")
    parser.add_argument("--only", help="comma-separated scenario numbers, e.g. 4,5")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--threads", type=int, default=8, help="threads per worker with --serving gthread"
    )
    parser.add_argument(
        "--serving",
        choices=("gevent", "gthread"),
        default="gevent",
        help="gunicorn worker model of ours: gevent (examples/gunicorn.conf.py, default) "
        "or gthread with --threads",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also record py-spy profiles of extra, unmeasured runs",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait for other processes to leave the CPU before each "
        "scenario (default 60, 0 with --quick)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DEPENDENCY_PROXY_KEY=VALUE",
        help="a setting of ours for the whole run (repeatable), e.g. "
        "--set DEPENDENCY_PROXY_BLOB_CHUNK_SIZE=0",
    )
    parser.add_argument(
        "--herd-clients", type=int, help="clients of scenario 9 (default 200, 50 with --quick)"
    )
    parser.add_argument(
        "--herd-hosts",
        choices=("one", "two", "both"),
        default="both",
        help="scenario 9 on one host, on two hosts, or both (default)",
    )
    parser.add_argument("--name", help="results file name (default: latest, or quick)")
    parser.add_argument("--workdir", type=Path, help="where processes keep their state")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    quick = args.quick
    repetitions = args.repetitions or (1 if quick else 5)
    if not 1 <= repetitions <= 50:
        parser.error("--repetitions must be between 1 and 50")
    only = tuple(sorted({int(x) for x in args.only.split(",")})) if args.only else SCENARIOS
    if not set(only) <= set(SCENARIOS):
        parser.error(f"--only takes scenario numbers from {SCENARIOS}")
    platform_env = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("DEPENDENCY_PROXY_"):
            parser.error(f"--set takes DEPENDENCY_PROXY_KEY=VALUE, not {item!r}")
        platform_env.append((key, value))
    settings = Settings(
        quick=quick,
        repetitions=repetitions,
        large_size=(32 if quick else 200) * MiB,
        huge_size=None if quick else GiB,
        load_seconds=2 if quick else 5,
        downloads=2 if quick else 3,
        concurrency=8,
        herd_clients=args.herd_clients or (50 if quick else 200),
        herd_size=(16 if quick else 64) * MiB,
        workers=args.workers,
        threads=args.threads,
        quiet_wait=args.quiet_wait if args.quiet_wait is not None else (0 if quick else 60),
        profile=args.profile,
        only=only,
        platform_env=tuple(platform_env),
        serving=args.serving,
        herd_hosts=args.herd_hosts,
    )
    return settings, args


def _interrupt(signum: int, frame: t.Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: t.Sequence[str] | None = None) -> int:
    settings, args = parse_args(argv)
    # Scenario 8 holds over a thousand sockets; gunicorn and distribution inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    missing = [
        tool for tool in ("docker-registry", "skopeo", "curl", "nginx") if not shutil.which(tool)
    ]
    if missing:
        print(f"missing tools: {', '.join(missing)} (see benchmarks/README.md)", file=sys.stderr)
        return 2
    if settings.profile and not shutil.which("py-spy"):
        print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    # Also when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    run_dir = Path(tempfile.mkdtemp(prefix="fdp-bench-", dir=args.workdir))
    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    name = args.name or ("quick" if settings.quick else "latest")
    bench = Bench(settings, run_dir)
    started = time.monotonic()
    interrupted = False
    log(f"work folder {run_dir}")
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted; stopping every process")
        interrupted = True
    finally:
        bench.stop_all()
        if args.keep:
            log(f"logs kept in {run_dir / 'logs'}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    if interrupted:
        return 130
    total = time.monotonic() - started
    bench.timings["total"] = total
    chart_path = results_dir / f"{name}.png"
    problem = report.chart(
        chart_path,
        bench.rows,
        f"ours / distribution ({'--quick' if settings.quick else 'full'} run)",
    )
    if problem:
        log(f"no chart: {problem}")
    text = render(bench, settings, None if problem else chart_path.name)
    text += f"\nTotal time: {total:.0f} s.\n"
    (results_dir / f"{name}.md").write_text(text)
    report.write_json(
        results_dir / f"{name}.json",
        bench.rows,
        {
            "settings": dataclasses.asdict(settings),
            "timings": bench.timings,
            "interference": bench.interference,
            "details": bench.details,
        },
    )
    print(text)
    log(f"results: {results_dir / (name + '.md')} ({total:.0f} s)")
    return 1 if bench.failures or any(row.error for row in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
