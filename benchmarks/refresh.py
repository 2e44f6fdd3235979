"""First pull after the tag moved upstream, with predictive refresh on and off.

One platform (gunicorn, SQLite, filesystem store) proxies a local ``docker-registry``.
Per repetition and mode, an image is pulled once with skopeo (so its tag is hot), a new
image is pushed under the same tag upstream, and with refresh **on** one refresher run
(``flask dependency-proxy refresh``, its run-once entry point) goes first; then the
client's pull of the tag is timed, and the upstream blob GETs it caused are counted.
A warm pull of the same tag is timed for comparison.

Then the refresher's upstream requests for N hot tags that do not move: N tags pulled,
one forced run counted in the upstream's access log, against what the schedule and
budget allow per hour (``RefreshDefaults.requests_per_hour``).

    python benchmarks/refresh.py             # 32 MiB layer, 3 repetitions, N = 10
    python benchmarks/refresh.py --quick     # 8 MiB layer, 1 repetition

It is a benchmark, not a test: it never fails on timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask_dependency_proxy.cache.refresh import RefreshDefaults
from tests.support import images, seed
from tests.support.clients import Skopeo, describe
from tests.support.platform import Platform
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

#: The instance defaults the per-hour figure is computed for.
INTERVAL_SECONDS = 900
BUDGET = 100


def log(message: str) -> None:
    print(f"[refresh-bench] {message}", file=sys.stderr, flush=True)


def _blob_gets(upstream: Registry, repository: str, since: int) -> int:
    return sum(
        1
        for r in upstream.access_log(since)
        if r.method == "GET" and r.kind == "blobs" and r.repository == repository
    )


def _timed_pull(skopeo: Skopeo, reference: str) -> float:
    started = time.perf_counter()
    result, _ = skopeo.copy_to_dir(reference)
    if result.returncode != 0:
        raise RuntimeError(describe(result))
    return time.perf_counter() - started


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 MiB layer, 1 repetition")
    parser.add_argument("--hot-tags", type=int, default=10)
    args = parser.parse_args(argv)
    size = (8 if args.quick else 32) * images.MiB
    repetitions = 1 if args.quick else 3
    run_dir = Path(tempfile.mkdtemp(prefix="fdp-bench-refresh-"))
    processes = ProcessFactory(run_dir / "logs")
    try:
        upstream = Registry(processes, run_dir / "upstream").start()
        live = Platform(
            processes,
            run_dir / "ours",
            database_url=f"sqlite:///{run_dir / 'ours.db'}",
            upstream_url=upstream.url,
            name="ours",
            extra_env={
                "DEPENDENCY_PROXY_USAGE_FLUSH_SECONDS": "0",
                "DEPENDENCY_PROXY_REFRESH_DEFAULT_ENABLED": "true",
            },
        )
        seed.seed_minimal(live)
        live.start()
        skopeo = Skopeo(run_dir / "skopeo", timeout=600)
        if skopeo.login(live.host, seed.ALICE.username, seed.ALICE.password).returncode:
            raise RuntimeError("skopeo login failed")
        times: dict[str, list[float]] = {"off": [], "on": [], "warm": [], "run": []}
        gets: dict[str, list[int]] = {"off": [], "on": []}
        for repetition in range(repetitions):
            for mode in ("off", "on"):
                repository = f"bench/refresh-{mode}-{repetition}"
                for version in (1, 2):
                    image = images.build_image(
                        f"bench-refresh-{mode}-{repetition}-{version}", layer_sizes=(size,)
                    )
                    images.push(image, upstream, repository, "stable", workdir=run_dir / "push")
                    if version == 1:
                        reference = live.image(seed.ACME, repository, "stable")
                        _timed_pull(skopeo, reference)
                        times["warm"].append(_timed_pull(skopeo, reference))
                if mode == "on":
                    started = time.perf_counter()
                    live.flask("dependency-proxy", "refresh", seed.ACME)
                    times["run"].append(time.perf_counter() - started)
                mark = upstream.mark()
                times[mode].append(_timed_pull(skopeo, live.image(seed.ACME, repository, "stable")))
                gets[mode].append(_blob_gets(upstream, repository, mark))
                log(f"repetition {repetition + 1} {mode}: {times[mode][-1]:.2f} s")
        # N hot tags that do not move: the HEADs of one forced run.
        for n in range(args.hot_tags):
            image = images.build_image(f"bench-hot-{n}", layer_sizes=(1000,))
            images.push(image, upstream, f"bench/hot{n}", "1", workdir=run_dir / "push")
            _timed_pull(skopeo, live.image(seed.ACME, f"bench/hot{n}", "1"))
        live.flask("dependency-proxy", "refresh", "--all")  # settles what moved before
        mark = upstream.mark()
        live.flask("dependency-proxy", "refresh", "--all")
        records = upstream.access_log(mark)
        heads = sum(1 for r in records if r.method == "HEAD" and r.kind == "manifests")
        other = len(records) - heads
        hot_total = args.hot_tags + 2 * repetitions  # the moved tags are hot too
        defaults = RefreshDefaults(interval_seconds=INTERVAL_SECONDS, budget=BUDGET)
        print(f"Layer {size // images.MiB} MiB, {repetitions} repetition(s), medians:\n")
        print("| first pull after the tag moved | seconds | upstream blob GETs |")
        print("| --- | --- | --- |")
        for mode in ("off", "on"):
            print(
                f"| refresh {mode} | {statistics.median(times[mode]):.2f} |"
                f" {statistics.median(gets[mode])} |"
            )
        print(f"| (a warm pull of the same tag) | {statistics.median(times['warm']):.2f} | 0 |")
        print(
            f"\nOne refresher run that fetched the move: {statistics.median(times['run']):.2f} s."
        )
        print(
            f"\n{hot_total} hot tags, none moved: one run made {heads} manifest HEADs and"
            f" {other} other upstream requests; at interval {INTERVAL_SECONDS} s that is"
            f" {heads * 3600 / INTERVAL_SECONDS:.0f} requests an hour (the schedule, the"
            f" {defaults.tags} hottest tags and budget {BUDGET} allow"
            f" {defaults.requests_per_hour(hot_total):.0f})."
        )
    finally:
        processes.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
