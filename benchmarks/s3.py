"""Cold and warm skopeo pulls of one large image through caches that keep their blobs in
S3-compatible object storage (a local SeaweedFS): ours with presigned redirects, ours
streaming hits itself, and CNCF distribution 2.8 in proxy mode with its ``s3-aws`` driver
(``redirect`` on), all on the same SeaweedFS and the same upstream.

Each repetition gives every cache a new, empty bucket and a fresh process; the order of
the caches rotates from one repetition to the next. The report gives the median wall
time of each pull and what reached upstream during the cold pull.

    python benchmarks/s3.py              # 200 MiB layer, 3 repetitions
    python benchmarks/s3.py --quick      # 32 MiB layer, 1 repetition

It is a benchmark, not a test: it never fails on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness as h
from tests.support.clients import Skopeo
from tests.support.processes import LiveProcess, ProcessFactory, free_port, http_probe
from tests.support.registry import Registry
from tests.support.seaweedfs import SeaweedFS, distribution_env

RESULTS = h.BENCH_DIR / "results"


class ObjectStored:
    """Whether a cache committed a blob, from the object store."""

    seaweedfs: SeaweedFS
    bucket: str

    def object_key(self, digest: str) -> str:
        raise NotImplementedError

    def has_blob(self, blob: h.BlobFile) -> bool:
        try:
            answer = self.seaweedfs.client.head_object(
                Bucket=self.bucket, Key=self.object_key(blob.digest)
            )
        except Exception:
            return False
        return int(answer["ContentLength"]) == blob.size

    def has_blobs(self, image: h.SeededImage) -> bool:
        return all(self.has_blob(blob) for blob in image.blobs)


class OursOnS3(ObjectStored, h.Ours):
    """The example platform with ``STORAGE_URL`` on a new bucket at every :meth:`fresh`."""

    def __init__(self, seaweedfs: SeaweedFS, redirect: bool, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self.seaweedfs = seaweedfs
        self.redirect = redirect
        self.bucket = ""

    def fresh(self) -> None:
        self.stop()
        self.bucket = self.seaweedfs.new_bucket()
        self.extra_env = {
            **self.seaweedfs.env(self.bucket),
            "DEPENDENCY_PROXY_S3_REDIRECT": "true" if self.redirect else "false",
        }
        super().fresh()

    def object_key(self, digest: str) -> str:
        algorithm, _, hex_ = digest.partition(":")
        return f"blobs/{algorithm}/{hex_[:2]}/{hex_}"


class DistributionOnS3(ObjectStored):
    """``docker-registry serve`` in proxy mode with the ``s3-aws`` driver, redirects on."""

    def __init__(
        self, processes: ProcessFactory, directory: Path, remote_url: str, seaweedfs: SeaweedFS
    ) -> None:
        self.label = "distribution-s3"
        self.processes = processes
        self.directory = directory
        self.remote_url = remote_url
        self.seaweedfs = seaweedfs
        self.bucket = ""
        self.port = free_port()
        self.process: LiveProcess | None = None
        self._generation = 0
        directory.mkdir(parents=True, exist_ok=True)
        self.skopeo = Skopeo(directory / "skopeo", timeout=600)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fresh(self) -> None:
        self.stop()
        self._generation += 1
        self.bucket = self.seaweedfs.new_bucket()
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": self.seaweedfs.distribution_storage(self.bucket),
            "http": {"addr": self.host, "secret": "bench-distribution-secret"},
            "proxy": {"remoteurl": self.remote_url},
        }
        config_path = self.directory / f"config-{self._generation}.yml"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        self.process = self.processes.create(
            self.label, ["docker-registry", "serve", config_path], env=distribution_env()
        )
        self.process.start(ready=http_probe(f"http://{self.host}/v2/", status=200), timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def reference(self, image: h.SeededImage) -> str:
        return f"{self.host}/{image.repository}:{image.tag}"

    def object_key(self, digest: str) -> str:
        algorithm, _, hex_ = digest.partition(":")
        return f"docker/registry/v2/blobs/{algorithm}/{hex_[:2]}/{hex_}/data"


Contender = OursOnS3 | DistributionOnS3


def empty_bucket(seaweedfs: SeaweedFS, bucket: str) -> None:
    """Delete what a run left in ``bucket`` (objects and unfinished uploads)."""
    client = seaweedfs.client
    for key in seaweedfs.objects(bucket):
        client.delete_object(Bucket=bucket, Key=key)
    for upload in seaweedfs.multipart_uploads(bucket):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def settle_machine(max_wait: float = 20.0, threshold: float = 0.15) -> None:
    """Flush dirty pages and wait for a second in which the whole machine is idle.

    What the previous contender left running (SeaweedFS deleting and compacting its
    objects, the kernel writing back hundreds of MiB) otherwise lands on the next one's
    cold pull: without this wait, the contender that followed distribution was the slow
    one in most repetitions.
    """
    os.sync()
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = _cpu_ticks()
        time.sleep(1.0)
        after = _cpu_ticks()
        busy, total = after[0] - before[0], after[1] - before[1]
        if total and busy / total < threshold:
            return


def _cpu_ticks() -> tuple[int, int]:
    """Busy and total ticks of all CPUs since boot (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def upstream_blob_gets(upstream: Registry, since: int, image: h.SeededImage) -> int:
    return sum(
        1
        for record in upstream.access_log(since)
        if record.method == "GET"
        and record.kind == "blobs"
        and record.repository == image.repository
    )


def cache_pids(contender: Contender) -> list[int]:
    """The cache's processes: gunicorn's master and workers, or distribution."""
    if isinstance(contender, OursOnS3):
        assert contender.platform is not None
        root = contender.platform.process.pid
    else:
        assert contender.process is not None
        root = contender.process.pid
    assert root is not None
    return [root, *h.children_of(root)]


class CpuMeter:
    """CPU seconds that each part of a pull used while a block ran: the cache, the
    object store, the upstream registry and the client (skopeo, a child of this process,
    counted once it has exited)."""

    def __init__(self, parts: dict[str, list[int]]) -> None:
        self.parts = parts
        self.used: dict[str, float] = {}

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> CpuMeter:
        self.start = {name: h.cpu_seconds(pids) for name, pids in self.parts.items()}
        self._client = self._children()
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {
            f"cpu_{name}": h.cpu_seconds(pids) - self.start[name]
            for name, pids in self.parts.items()
        }
        self.used["cpu_client"] = self._children() - self._client


def measure(
    contender: Contender,
    image: h.SeededImage,
    upstream: Registry,
    work: Path,
    profile: Path | None = None,
) -> dict[str, float]:
    """Cold then warm pull on a fresh cache, with the CPU seconds of the cold one; with
    ``profile``, our cold pull is recorded with py-spy into that folder."""
    contender.fresh()
    try:
        h.settle_upstream(upstream)
        settle_machine()
        assert contender.seaweedfs.process is not None and upstream.process.pid is not None
        meter = CpuMeter(
            {
                "cache": cache_pids(contender),
                "store": [t.cast(int, contender.seaweedfs.process.pid)],
                "upstream": [upstream.process.pid],
            }
        )
        mark = upstream.mark()
        recording: t.ContextManager[object] = contextlib.nullcontext()
        if profile is not None and isinstance(contender, OursOnS3):
            assert contender.platform is not None and contender.platform.process.pid
            name = f"{contender.name}-cold-{len(list(profile.glob('*.txt'))) + 1}"
            recording = h.PySpy(contender.platform.process.pid, profile, name)
        with recording, meter:
            cold = h.pull(contender, image, work / "cold")  # type: ignore[arg-type]
        h.wait_cached(contender, image)  # type: ignore[arg-type]
        h.settle_upstream(upstream)
        # Work that ends after the client has its bytes (the commit) counts too.
        store_total = h.cpu_seconds(meter.parts["store"]) - meter.start["store"]
        gets = upstream_blob_gets(upstream, mark, image)
        # What the cold pull left running (the object store writing the blob out, the
        # kernel writing back its pages) would land on the warm pull otherwise.
        settle_machine()
        warm_mark = upstream.mark()
        warm = h.pull(contender, image, work / "warm")  # type: ignore[arg-type]
        warm_gets = upstream_blob_gets(upstream, warm_mark, image)
    finally:
        contender.stop()
        empty_bucket(contender.seaweedfs, contender.bucket)
    return {
        "cold": cold,
        "warm": warm,
        "cold_blob_gets": gets,
        "warm_blob_gets": warm_gets,
        **meter.used,
        "cpu_store_until_committed": store_total,
    }


def render(
    results: dict[str, list[dict[str, float]]], size_mib: int, repetitions: int, seconds: float
) -> str:
    lines = [
        "# Pulls with blobs in S3-compatible object storage (SeaweedFS)",
        "",
        f"One image with one {size_mib} MiB layer (random bytes, uncompressed tar), pulled with"
        f" `skopeo copy` to `dir:`; median of {repetitions} repetition(s), each on a new bucket"
        " and a fresh process. `python benchmarks/s3.py"
        + (" --quick" if size_mib < 200 else "")
        + "`.",
        "",
        "| cache | cold pull (s) | warm pull (s) | upstream blob GETs: cold | warm"
        " | CPU s in a cold pull: cache | object store | upstream | client"
        " | object store until the blob is committed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, runs in results.items():
        if not runs:
            lines.append(f"| {label} | failed | failed | | |")
            continue

        def median(field: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(run[field] for run in runs)

        lines.append(
            f"| {label} | {median('cold'):.2f} | {median('warm'):.2f}"
            f" | {median('cold_blob_gets'):.0f} | {median('warm_blob_gets'):.0f}"
            f" | {median('cpu_cache'):.2f} | {median('cpu_store'):.2f}"
            f" | {median('cpu_upstream'):.2f} | {median('cpu_client'):.2f}"
            f" | {median('cpu_store_until_committed'):.2f} |"
        )
    lines += [
        "",
        "CPU seconds are those each process used from the start of the cold pull until"
        " skopeo exited; the last column runs on until the cache has committed the blob"
        " to the object store.",
        "",
        "All values, in run order:",
        "",
        "```",
        json.dumps(results, indent=1),
        "```",
        "",
        f"Machine: {os.cpu_count()} cores; total time {seconds:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB layer, 1 repetition")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument("--name", default=None, help="results file name (default s3)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record our cold pulls with py-spy into this folder (adds py-spy's overhead)",
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated contenders: redirect,streamed,distribution"
    )
    args = parser.parse_args(argv)
    size_mib = args.size_mib or (32 if args.quick else 200)
    repetitions = args.repetitions or (1 if args.quick else 3)
    name = args.name or ("s3-quick" if args.quick else "s3")
    for tool in ("docker-registry", "skopeo", "weed"):
        if shutil.which(tool) is None:
            print(f"missing tool: {tool} (see benchmarks/README.md)", file=sys.stderr)
            return 2

    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="fdp-bench-s3-"))
    processes = ProcessFactory(run_dir / "logs")
    seaweedfs = SeaweedFS(processes, run_dir / "seaweedfs")
    results: dict[str, list[dict[str, float]]] = {}
    try:
        log("starting SeaweedFS and the upstream, seeding the image")
        seaweedfs.start()
        upstream = Registry(processes, run_dir / "upstream").start()
        image = h.build_large_image(
            run_dir / "images", "bench-s3", size_mib * h.MiB, "library/large"
        )
        h.push(image, upstream.url)
        if image.blobs[-1].path is not None:
            image.blobs[-1].path.unlink()
        template = h.seed_template(run_dir / "template", upstream.url)

        def ours(label: str, redirect: bool) -> OursOnS3:
            return OursOnS3(
                seaweedfs,
                redirect,
                processes=processes,
                directory=run_dir / label,
                template=template,
                upstream_url=upstream.url,
                workers=2,
                threads=1,
                name=label,
            )

        contenders: list[tuple[str, Contender]] = [
            ("ours, S3 redirect", ours("ours-redirect", True)),
            ("ours, S3 streamed", ours("ours-streamed", False)),
            (
                "distribution 2.8, s3-aws",
                DistributionOnS3(processes, run_dir / "distribution", upstream.url, seaweedfs),
            ),
        ]
        if args.only:
            wanted = set(args.only.split(","))
            contenders = [(label, c) for label, c in contenders if any(w in label for w in wanted)]
        results = {label: [] for label, _ in contenders}
        for repetition in range(repetitions):
            turn = repetition % len(contenders)
            for label, contender in contenders[turn:] + contenders[:turn]:
                log(f"repetition {repetition + 1}: {label}")
                try:
                    run = measure(contender, image, upstream, run_dir / "pulls", args.profile)
                except h.BenchError as exc:
                    log(f"  failed: {describe_error(exc)}")
                    continue
                log(f"  cold {run['cold']:.2f} s, warm {run['warm']:.2f} s")
                results[label].append(run)
    finally:
        processes.stop_all()
        seaweedfs.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    text = render(results, size_mib, repetitions, time.monotonic() - started)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return 0 if all(len(runs) == repetitions for runs in results.values()) else 1


def describe_error(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def log(message: str) -> None:
    print(f"[s3 bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
