"""What one warm manifest GET costs the server, in measures a busy machine does not blur.

Scenario 4 of :mod:`run` reports requests per second, which other processes on the
machine lower. This script starts the example platform the way :mod:`run` does (gevent
workers of the shipped ``examples/gunicorn.conf.py``, one unless ``--workers``;
``DEPENDENCY_PROXY_TAG_CHECK_INTERVAL=30`` unless ``--interval``), caches the small
image's manifest, then sends authorized manifest GETs by tag with the full Accept list
from 8 connections (wrk, or ``loadgen.py`` without it) and reports:

- the workers' user + system CPU time per GET (``/proc/PID/stat`` before and after each
  round), which contention raises less than it lowers requests per second, though on a
  crowded machine it still moves by a third between rounds;
- ``--instructions``: machine instructions per GET, counted by valgrind in a replay of
  the same GET through Flask's test client of the app built in one process (patched by
  gevent, the request log set up as the gunicorn configuration sets it; the tag stays
  fresh throughout). The count repeats within 1 % whatever else the machine runs; it
  leaves out gunicorn's own HTTP handling, the same for every revision. About 1.5 min;
- ``--in-process``: Python calls and SQL statements per GET in that replay, the CPU
  time per GET of its fastest batch, and a cProfile listing (``MANIFEST_CPU_PSTATS=FILE``
  keeps the profile for ``pstats``);
- ``--profile``: the workers' functions with the most py-spy samples; ``--strace``:
  their system calls.

``--checkout DIR`` measures another checkout of the project (e.g. a ``git worktree`` of
an old revision) with that checkout's own package, platform and harness; ``--start-at``
starts the measured rounds of two such runs at the same moment::

    python benchmarks/manifest_cpu.py --rounds 0 --instructions
    git worktree add --detach /tmp/old 9bc74eb
    python benchmarks/manifest_cpu.py --checkout /tmp/old --rounds 0 --instructions
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _worker_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summarize(raw: Path, top: int) -> str:
    """The functions of the project, Flask and friends with the most samples in a
    ``py-spy --format raw`` recording: own samples and inclusive samples, as shares."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        # Idle: the gevent hub waiting for sockets.
        if not frames or any(s in frames[-1] for s in ("wait (", "select (", "poll (")):
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "(no busy samples)"
    lines = [f"{total} busy samples; own time:"]
    lines += [f"  {100 * n / total:5.1f} %  {f}" for f, n in own.most_common(top)]
    lines.append("inclusive (frames of the project, the platform, Flask, Werkzeug, SQLAlchemy):")
    keep = ("flask_dependency_proxy/", "examples/platform/", "flask/", "werkzeug/", "sqlalchemy/")
    ranked = [(f, n) for f, n in inclusive.most_common() if any(k in f for k in keep)]
    lines += [f"  {100 * n / total:5.1f} %  {f}" for f, n in ranked[: top * 2]]
    return "\n".join(lines)


def _in_process(env: dict[str, str], url: str, headers: dict[str, str], top: int) -> None:
    """The same GET through Flask's test client of the app built in this process, with
    the platform's environment and the request log set up as ``examples/gunicorn.conf.py``
    sets it: counts that do not depend on the machine (Python function calls and SQL
    statements per request, from cProfile and an engine event) and the smallest CPU time
    per request of several batches."""
    import cProfile  # noqa: PLC0415
    import logging  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    import sqlalchemy  # noqa: PLC0415

    from examples.platform import create_app  # noqa: PLC0415

    os.environ.update(env)
    if "logconfig_dict" in Path("examples/gunicorn.conf.py").read_text():
        logger = logging.getLogger("flask_dependency_proxy")
        handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
        handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    app = create_app()
    client = app.test_client()
    statements = [0]

    def count(*_: object) -> None:
        statements[0] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)

    def get() -> None:
        answer = client.get(url, headers=headers)
        if answer.status_code != 200:
            raise SystemExit(f"in-process GET answered {answer.status_code}: {answer.data!r}")
        answer.close()

    for _ in range(50):
        get()
    batches = []
    for _ in range(10):
        started = time.process_time()
        for _ in range(100):
            get()
        batches.append((time.process_time() - started) / 100 * 1e6)
    statements[0] = 0
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        get()
    profile.disable()
    stats = pstats.Stats(profile)
    if os.environ.get("MANIFEST_CPU_PSTATS"):
        stats.dump_stats(os.environ["MANIFEST_CPU_PSTATS"])
    calls = getattr(stats, "total_calls", 0) / 200
    print(
        f"in process: {min(batches):.0f} µs CPU per GET (min of 10 batches of 100; median "
        f"{statistics.median(batches):.0f}), {calls:.0f} Python calls and "
        f"{statements[0] / 200:g} SQL statements per GET",
        flush=True,
    )
    stats.sort_stats("cumulative").print_stats(r"flask_dependency_proxy|examples/platform", top)


def _replay(spec_path: Path, requests: int) -> None:
    """Build the app in this process from a ``--keep`` folder's ``replay.json``, patched
    by gevent as gunicorn's gevent worker is, log in, and send ``requests`` manifest GETs
    through Flask's test client: the unit :func:`_count_instructions` runs under
    valgrind twice, with two request counts."""
    from gevent import monkey  # type: ignore[import-untyped]  # noqa: PLC0415

    monkey.patch_all()
    import json  # noqa: PLC0415
    import logging  # noqa: PLC0415

    spec = json.loads(spec_path.read_text())
    sys.path[:0] = [spec["checkout"]]
    os.chdir(spec["checkout"])
    os.environ.update(spec["env"])
    from examples.platform import create_app  # noqa: PLC0415

    if "logconfig_dict" in Path("examples/gunicorn.conf.py").read_text():
        logger = logging.getLogger("flask_dependency_proxy")
        handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
        handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    client = create_app().test_client()
    login = client.get(
        spec["token_url"], query_string=spec["token_query"], auth=tuple(spec["login"])
    )
    headers = {"Authorization": f"Bearer {login.get_json()['token']}", "Accept": spec["accept"]}
    for _ in range(requests):
        answer = client.get(spec["url"], headers=headers)
        if answer.headers.get("Docker-Content-Digest") != spec["digest"]:
            raise SystemExit(f"replayed GET answered {answer.status_code}: {answer.data!r}")
        answer.close()


def _count_instructions(spec_path: Path, low: int, high: int) -> float:
    """Machine instructions per GET, counted by valgrind (cachegrind without its cache
    simulation), so neither contention nor the CPU's clock changes them: the difference
    between a replay of ``high`` and one of ``low`` requests, divided by the difference."""
    counts = []
    for n in (low, high):
        out = spec_path.with_name(f"cachegrind-{n}.out")
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no"]
            + [f"--cachegrind-out-file={out}", sys.executable, __file__]
            + ["--replay", str(spec_path), "--requests", str(n)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        summary = next(line for line in out.read_text().splitlines() if line.startswith("summary:"))
        counts.append(int(summary.split()[1]))
    return (counts[1] - counts[0]) / (high - low)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=HERE.parent)
    parser.add_argument("--interval", default="30", help="DEPENDENCY_PROXY_TAG_CHECK_INTERVAL")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--seconds", type=float, default=3.0, help="load per round")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker too")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--strace", action="store_true", help="count the workers' system calls")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="also count Python calls, SQL statements and CPU per GET of the app in this process",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the platform (repeatable)"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count machine instructions per GET in this process under valgrind",
    )
    parser.add_argument(
        "--start-at",
        type=float,
        default=0.0,
        help="start the measured rounds at this Unix time (two checkouts side by side)",
    )
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        _replay(args.replay, args.requests)
        return 0

    checkout = args.checkout.resolve()
    # The checkout's own package, test support and harness, also in gunicorn's environment.
    sys.path[:0] = [str(checkout), str(checkout / "benchmarks")]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    os.chdir(checkout)
    import harness as h  # noqa: PLC0415  (the checkout's, imported after sys.path is set)

    from tests.support.processes import ProcessFactory  # noqa: PLC0415
    from tests.support.registry import Registry  # noqa: PLC0415

    revision = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="manifest-cpu-") as tmp:
        run_dir = Path(tmp)
        processes = ProcessFactory(run_dir / "logs")
        try:
            upstream = Registry(processes, run_dir / "upstream").start()
            small = h.small_image("library/small")
            h.push(small, upstream.url)
            template = h.seed_template(run_dir / "template", upstream.url)
            env = {"DEPENDENCY_PROXY_TAG_CHECK_INTERVAL": args.interval}
            env.update(item.split("=", 1) for item in args.env)
            ours = h.Ours(
                processes,
                run_dir / "ours",
                template=template,
                upstream_url=upstream.url,
                workers=args.workers,
                threads=8,
                extra_env=env,
            )
            ours.fresh()
            url = ours.manifest_url(small)
            headers = {**ours.auth_headers(small), "Accept": h.MANIFEST_ACCEPT}
            import requests  # noqa: PLC0415

            answer = requests.get(url, headers=headers, timeout=30)
            if answer.headers.get("Docker-Content-Digest") != small.digest:
                raise SystemExit(f"manifest GET answered {answer.status_code}: {answer.text}")
            workers = h.children_of(ours.master_pid)
            worker = workers[0]
            h.load(url, headers, method="GET", duration=1.0)  # warm-up
            if args.start_at:  # measured side by side with another checkout's run
                time.sleep(max(0.0, args.start_at - time.time()))
            per_request: list[float] = []
            rates: list[float] = []
            latencies: list[str] = []
            for _ in range(args.rounds):
                before = sum(map(_worker_cpu_seconds, workers))
                result = h.load(url, headers, method="GET", duration=args.seconds)
                used = sum(map(_worker_cpu_seconds, workers)) - before
                if result.non_2xx or result.socket_errors or not result.requests:
                    raise SystemExit(f"load failed: {result}")
                per_request.append(used / result.requests * 1e6)
                rates.append(result.requests_per_second)
                latencies.append(
                    f"{result.latency_p50_ms:.1f}/{result.latency_p99_ms:.1f}/"
                    f"{8000 / result.requests_per_second:.1f}"
                )
            if per_request:
                print(
                    f"{revision} interval {args.interval}: "
                    f"{statistics.median(per_request):.0f} µs CPU per GET "
                    f"(rounds: {', '.join(f'{v:.0f}' for v in per_request)}; "
                    f"{statistics.median(rates):.0f} req/s wall, {os.getloadavg()[0]:.1f} load)",
                    flush=True,
                )
                print(f"latency p50/p99/mean ms per round: {', '.join(latencies)}")
            if args.strace:
                trace = run_dir / "strace.txt"
                tracer = subprocess.Popen(
                    ["strace", "-c", "-w", "-f", "-o", str(trace)]
                    + [arg for pid in workers for arg in ("-p", str(pid))],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)
                result = h.load(url, headers, method="GET", duration=args.seconds)
                tracer.send_signal(2)
                tracer.wait(timeout=60)
                print(f"system calls of the workers during {result.requests} GETs:")
                print(trace.read_text())
            if args.in_process:
                assert ours.platform is not None
                _in_process(ours.platform.env, url, headers, args.top)
            if args.profile:
                raw = run_dir / "profile.txt"
                spy = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(worker), "--rate", "500"]
                    + ["--format", "raw", "--function", "-o", str(raw), "--nonblocking"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)
                h.load(url, headers, method="GET", duration=max(args.seconds, 5.0))
                spy.send_signal(2)  # SIGINT: py-spy writes its output and ends
                spy.wait(timeout=60)
                print(_summarize(raw, args.top))
            if args.instructions:
                import json  # noqa: PLC0415

                spec = run_dir / "replay.json"
                assert ours.platform is not None
                spec.write_text(
                    json.dumps(
                        {
                            "checkout": str(checkout),
                            # Fresh for the whole replay, which valgrind slows down:
                            # the same path as a warm GET within 30 s, and no HEADs.
                            "env": {
                                **ours.platform.env,
                                "DEPENDENCY_PROXY_TAG_CHECK_INTERVAL": "86400",
                            },
                            "url": url,
                            "digest": small.digest,
                            "accept": h.MANIFEST_ACCEPT,
                            "token_url": f"{ours.platform.url}/jwt/auth",
                            "token_query": {
                                "service": "dependency_proxy",
                                "scope": f"repository:{ours._repository(small)}:pull",
                            },
                            "login": [h.USER.username, ours.secret],
                        }
                    )
                )
                ours.stop()  # the replay reads the same database and store
                per_get = _count_instructions(spec, 50, 250)
                print(f"{revision}: {per_get / 1e6:.3f} M instructions per GET (valgrind)")
        finally:
            processes.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
