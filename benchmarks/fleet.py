"""Eight concurrent cold pulls of one image, split across two hosts that share one
PostgreSQL database and one S3-compatible bucket (a local SeaweedFS): ours with
``DEPENDENCY_PROXY_PEER_URL`` set on both hosts, against two CNCF distribution 2.8
instances in proxy mode on one bucket with the ``s3-aws`` driver.

Reported per contender, median over the repetitions: wall time of the eight pulls, the
upstream GETs per blob, and what the object store saw (requests by method, bytes
written and read), counted by a recording proxy in front of SeaweedFS that every
request to the object store goes through, presigned client downloads included.

    python benchmarks/fleet.py               # 64 MiB layer, 3 repetitions
    python benchmarks/fleet.py --quick       # 16 MiB layer, 1 repetition

It is a benchmark, not a test: it never fails on timing.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import shutil
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import images, seed
from tests.support.clients import Skopeo, describe
from tests.support.faultproxy import FaultProxy
from tests.support.platform import Platform
from tests.support.postgres import PostgresCluster
from tests.support.processes import LiveProcess, ProcessFactory, free_port, http_probe
from tests.support.registry import Registry
from tests.support.seaweedfs import SeaweedFS, distribution_env

RESULTS = Path(__file__).resolve().parent / "results"
PULLS = 8


class Run(t.NamedTuple):
    wall: float
    blob_gets: dict[str, int]
    store_requests: dict[str, int]
    store_bytes_in: int
    store_bytes_out: int


def _pull_all(references: list[str], clients: list[Skopeo]) -> float:
    def pull(number: int) -> None:
        result, target = clients[number].copy_to_dir(references[number])
        if result.returncode != 0:
            raise RuntimeError(f"pull {number} failed: {describe(result)}")
        shutil.rmtree(target, ignore_errors=True)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(PULLS) as pool:
        list(pool.map(pull, range(PULLS)))
    return time.monotonic() - started


def _measure(
    references: list[str],
    clients: list[Skopeo],
    upstream: Registry,
    recorder: FaultProxy,
    pushed: images.Pushed,
    sizes: dict[str, int],
) -> Run:
    mark = upstream.mark()
    logged = len(recorder.requests)
    wall = _pull_all(references, clients)
    time.sleep(1.0)  # commits and bookkeeping that follow the last byte
    blob_gets = {
        digest: upstream.count("GET", kind="blobs", reference=digest, since=mark)
        for digest in pushed.blob_digests
    }
    requests = recorder.requests[logged:]
    by_method = collections.Counter(r.method for r in requests)
    bytes_in = sum(
        int((r.header_lines("Content-Length") or ["0"])[0]) for r in requests if r.method == "PUT"
    )
    bytes_out = 0
    for entry in requests:
        if entry.method == "GET" and entry.status in (200, 206):
            hex_digest = next((h for h in sizes if h in entry.path), None)
            bytes_out += sizes.get(hex_digest or "", 0)
    return Run(wall, blob_gets, dict(by_method), bytes_in, bytes_out)


def run_ours(
    processes: ProcessFactory,
    work: Path,
    cluster: PostgresCluster,
    seaweedfs: SeaweedFS,
    recorder: FaultProxy,
    upstream: Registry,
    pushed: images.Pushed,
    sizes: dict[str, int],
) -> Run:
    database = cluster.create_database("fleet")
    bucket = seaweedfs.new_bucket()
    shared = {
        **seaweedfs.env(bucket),
        "DEPENDENCY_PROXY_S3_ENDPOINT_URL": recorder.url,
        "SECRET_KEY": "bench-fleet-secret",
    }
    hosts = [
        Platform(
            processes,
            work / f"ours-{name}",
            database_url=cluster.url(database),
            upstream_url=upstream.url,
            name=f"ours-{name}",
            extra_env=shared,
            peer=True,
        )
        for name in ("a", "b")
    ]
    try:
        seed.seed_minimal(hosts[0])
        # A personal access token, as CI jobs log in: no password hash per token request.
        scopes = "read_registry,write_registry"
        created = hosts[0].flask("token", "create", seed.ALICE.username, "--scopes", scopes)
        secret = created.stdout.strip().splitlines()[-1]
        for host in hosts:
            host.start()
        clients = []
        for number in range(PULLS):
            host = hosts[number % 2]
            client = Skopeo(work / f"ours-skopeo-{number}", timeout=600)
            result = client.login(host.host, seed.ALICE.username, secret)
            if result.returncode != 0:
                raise RuntimeError(describe(result))
            clients.append(client)
        references = [
            hosts[n % 2].image(seed.ACME, pushed.repository.split("/", 1)[1], pushed.tag)
            for n in range(PULLS)
        ]
        return _measure(references, clients, upstream, recorder, pushed, sizes)
    finally:
        for host in hosts:
            host.stop()
        cluster.drop_database(database)


def run_distribution(
    processes: ProcessFactory,
    work: Path,
    seaweedfs: SeaweedFS,
    recorder: FaultProxy,
    upstream: Registry,
    pushed: images.Pushed,
    sizes: dict[str, int],
) -> Run:
    bucket = seaweedfs.new_bucket()
    instances: list[tuple[str, LiveProcess]] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            config = {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": seaweedfs.distribution_storage(bucket, endpoint=recorder.url),
                "http": {"addr": f"127.0.0.1:{port}", "secret": "bench-fleet"},
                "proxy": {"remoteurl": upstream.url},
            }
            path = work / f"distribution-{name}.yml"
            path.write_text(json.dumps(config))
            process = processes.create(
                f"distribution-{name}",
                ["docker-registry", "serve", str(path)],
                env=distribution_env(),
            )
            process.start(ready=http_probe(f"http://127.0.0.1:{port}/v2/", status=200), timeout=30)
            instances.append((f"127.0.0.1:{port}", process))
        clients = [Skopeo(work / f"distribution-skopeo-{n}", timeout=600) for n in range(PULLS)]
        references = [
            f"{instances[n % 2][0]}/{pushed.repository}:{pushed.tag}" for n in range(PULLS)
        ]
        return _measure(references, clients, upstream, recorder, pushed, sizes)
    finally:
        for _, process in instances:
            process.stop()


def render(results: dict[str, list[Run]], size_mib: int, seconds: float) -> str:
    lines = [
        "# Eight concurrent cold pulls across two hosts, one bucket",
        "",
        f"One image with one {size_mib} MiB layer; {PULLS} `skopeo copy` at once, alternating"
        f" between the two hosts; medians over {max(len(r) for r in results.values())}"
        f" repetitions; run took {seconds:.0f} s. `python benchmarks/fleet.py`.",
        "",
        "| contender | wall time (s) | upstream GETs per blob (max) | object store requests"
        " (by method) | MiB written to the store | MiB read from the store |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, runs in results.items():
        if not runs:
            lines.append(f"| {label} | failed | | | | |")
            continue
        wall = statistics.median(run.wall for run in runs)
        gets = statistics.median(max(run.blob_gets.values()) for run in runs)
        methods = collections.Counter[str]()
        for run in runs:
            methods.update(run.store_requests)
        requests = ", ".join(
            f"{method} {count / len(runs):.0f}" for method, count in sorted(methods.items())
        )
        written = statistics.median(run.store_bytes_in for run in runs) / 2**20
        read = statistics.median(run.store_bytes_out for run in runs) / 2**20
        lines.append(
            f"| {label} | {wall:.2f} | {gets:.0f} | {requests} | {written:.1f} | {read:.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB layer, 1 repetition")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--size-mib", type=int, default=None)
    args = parser.parse_args(argv)
    size_mib = args.size_mib or (16 if args.quick else 64)
    repetitions = args.repetitions or (1 if args.quick else 3)
    name = "fleet-quick" if args.quick else "fleet"
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="fdp-bench-fleet-"))
    processes = ProcessFactory(run_dir / "logs")
    seaweedfs = SeaweedFS(processes, run_dir / "seaweedfs")
    cluster = PostgresCluster(processes)
    results: dict[str, list[Run]] = {"ours, 2 hosts": [], "distribution 2.8, 2 instances": []}
    try:
        log("starting PostgreSQL, SeaweedFS and the upstream")
        cluster.start()
        seaweedfs.start()
        recorder = FaultProxy(seaweedfs.endpoint).start()
        upstream = Registry(processes, run_dir / "upstream").start()
        for repetition in range(repetitions):
            # A new image per repetition: every pull is cold upstream too.
            image = images.build_image(
                f"bench-fleet-{repetition}", layer_sizes=(size_mib * images.MiB,)
            )
            pushed = images.push(
                image, upstream, f"library/fleet{repetition}", "1", workdir=run_dir / "push"
            )
            sizes = {blob.digest.split(":")[1]: len(blob.data) for blob in image.blobs}
            log(f"repetition {repetition + 1}: ours")
            results["ours, 2 hosts"].append(
                run_ours(
                    processes,
                    run_dir / f"r{repetition}",
                    cluster,
                    seaweedfs,
                    recorder,
                    upstream,
                    pushed,
                    sizes,
                )
            )
            log(f"repetition {repetition + 1}: distribution")
            results["distribution 2.8, 2 instances"].append(
                run_distribution(
                    processes,
                    run_dir / f"r{repetition}",
                    seaweedfs,
                    recorder,
                    upstream,
                    pushed,
                    sizes,
                )
            )
        recorder.stop()
    finally:
        processes.stop_all()
        seaweedfs.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    text = render(results, size_mib, time.monotonic() - started)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return 0


def log(message: str) -> None:
    print(f"[fleet bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
