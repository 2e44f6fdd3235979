"""The parts a benchmark run starts and talks to.

- the upstream registry (``docker-registry``, from :mod:`tests.support.registry`) and the
  images seeded into it, built on disk so a 1 GB layer never sits in memory;
- :class:`Distribution`, CNCF distribution 2.8 in proxy mode on that upstream, the
  reference cache;
- :class:`Ours`, the example platform under gunicorn with the extension, started from a
  seeded template database so a fresh, empty cache costs one gunicorn start;
- :class:`Nginx` serving a file with ``sendfile``;
- measuring helpers: timed skopeo pulls, ``wrk``, ``curl`` downloads, herds of asyncio
  clients (:mod:`herd`), RSS sampling of processes, py-spy recordings.

Everything binds 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import typing as t
from pathlib import Path

import requests

from tests.support import images, seed
from tests.support.clients import Skopeo, describe
from tests.support.platform import PROXY_SEGMENT, CommandFailed, Platform
from tests.support.processes import LiveProcess, ProcessFactory, free_port, http_probe, wait_for
from tests.support.registry import AccessRecord, Registry

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
MiB = 1024 * 1024

#: What every cache must send upstream, and what the load generator sends as a client.
MANIFEST_ACCEPT = images.MANIFEST_ACCEPT
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

#: The account and group the platform is seeded with (as ``seed.seed_minimal``).
USER = seed.ALICE
GROUP = seed.ACME


class BenchError(RuntimeError):
    """A measurement could not be taken (a pull failed, a server did not answer)."""


# -- images -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlobFile:
    """A blob on disk (or in memory for small ones)."""

    digest: str
    size: int
    media_type: str
    path: Path | None = None
    data: bytes | None = dataclasses.field(default=None, repr=False)

    def descriptor(self) -> dict[str, t.Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclasses.dataclass(frozen=True)
class SeededImage:
    """An image (or index) as pushed upstream: what a pull must transfer."""

    repository: str  # upstream repository, e.g. ``library/big``
    tag: str
    digest: str
    media_type: str
    manifest: bytes = dataclasses.field(repr=False)
    blobs: tuple[BlobFile, ...]
    #: For an index: the child manifests ``(digest, media_type, bytes)``.
    children: tuple[tuple[str, str, bytes], ...] = ()

    @property
    def image(self) -> str:
        """The name a client uses below a proxy prefix (``library/`` dropped)."""
        return self.repository.removeprefix("library/")

    @property
    def total_bytes(self) -> int:
        """Bytes of one full pull: every manifest and blob once."""
        return (
            len(self.manifest)
            + sum(len(c[2]) for c in self.children)
            + sum(b.size for b in self.blobs)
        )

    @property
    def largest_blob(self) -> BlobFile:
        return max(self.blobs, key=lambda b: b.size)


def _canonical(document: t.Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def build_large_image(directory: Path, seed_text: str, size: int, repository: str) -> SeededImage:
    """A one-layer image whose layer is an uncompressed tar of ``size`` seeded random
    bytes, written straight to disk (a 1 GB layer never sits in memory, and no gzip pass
    slows the build). Random bytes do not compress, so the size on the wire is the size."""
    directory.mkdir(parents=True, exist_ok=True)
    layer_path = directory / f"{repository.replace('/', '_')}-{seed_text}.tar"
    rng = random.Random(seed_text)
    hasher = hashlib.sha256()
    info = tarfile.TarInfo("data/payload.bin")
    info.size = size
    info.mtime = 1_700_000_000
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    with layer_path.open("wb") as out:

        def write(data: bytes) -> None:
            hasher.update(data)
            out.write(data)

        write(header)
        left = size
        while left:
            n = min(left, 8 * MiB)
            write(rng.randbytes(n))
            left -= n
        write(b"\0" * ((-size) % 512) + b"\0" * 1024)
    layer_size = layer_path.stat().st_size
    layer = BlobFile("sha256:" + hasher.hexdigest(), layer_size, OCI_LAYER_TAR, path=layer_path)
    config_data = _canonical(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": {"Cmd": ["/bin/sh"], "Labels": {"bench.seed": seed_text}},
            # An uncompressed layer's diff ID is its digest.
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }
    )
    config = BlobFile(
        images.sha256_digest(config_data), len(config_data), images.OCI_CONFIG, data=config_data
    )
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": images.OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        }
    )
    return SeededImage(
        repository,
        "1",
        images.sha256_digest(manifest),
        images.OCI_MANIFEST,
        manifest,
        (config, layer),
    )


def _memory_blobs(image: images.Image) -> tuple[BlobFile, ...]:
    return tuple(BlobFile(b.digest, b.size, b.media_type, data=b.data) for b in image.blobs)


def small_image(repository: str, seed_text: str = "bench-small") -> SeededImage:
    """The two-layer small image (1 MiB + 2 MiB gzipped layers)."""
    image = images.build_image(seed_text)
    return SeededImage(
        repository, "1", image.digest, image.media_type, image.manifest, _memory_blobs(image)
    )


def multiarch_index(repository: str, seed_text: str = "bench-multi") -> SeededImage:
    """A two-platform OCI index (amd64, arm64/v8), each child with two small layers."""
    index = images.build_index(seed_text)
    blobs = tuple(b for image in index.images for b in _memory_blobs(image))
    children = tuple((i.digest, i.media_type, i.manifest) for i in index.images)
    return SeededImage(
        repository, "1", index.digest, index.media_type, index.manifest, blobs, children
    )


class _UpstreamAuth(requests.auth.AuthBase):
    """Bearer tokens from the registry's own challenge (for a token-auth upstream)."""

    def __init__(self, credentials: tuple[str, str] | None) -> None:
        self.credentials = credentials
        self.token: str | None = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def negotiate(self, challenge: str, repository: str) -> None:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        if "realm" not in params:
            raise BenchError(f"upstream challenge without a realm: {challenge}")
        answer = requests.get(
            params["realm"],
            params={
                "service": params.get("service", ""),
                "scope": f"repository:{repository}:pull,push",
            },
            auth=self.credentials,
            timeout=30,
        )
        answer.raise_for_status()
        self.token = answer.json()["token"]


def push(
    image: SeededImage, upstream_url: str, *, credentials: tuple[str, str] | None = None
) -> None:
    """Push over the registry API: blobs (monolithic PUT), child manifests, then the tag.

    :param credentials: for an upstream with token auth (Basic at its token realm).
    """
    session = requests.Session()
    session.trust_env = False
    auth = _UpstreamAuth(credentials)
    session.auth = auth
    base = upstream_url
    repo = image.repository

    def send(method: str, url: str, **kwargs: t.Any) -> requests.Response:
        response = session.request(method, url, **kwargs)
        if response.status_code == 401 and "Bearer" in response.headers.get("WWW-Authenticate", ""):
            auth.negotiate(response.headers["WWW-Authenticate"], repo)
            body = kwargs.get("data")
            if hasattr(body, "seek"):
                body.seek(0)
            response = session.request(method, url, **kwargs)
        return response

    with session:
        for blob in image.blobs:
            if send("HEAD", f"{base}/v2/{repo}/blobs/{blob.digest}", timeout=30).status_code == 200:
                continue
            started = send("POST", f"{base}/v2/{repo}/blobs/uploads/", timeout=30)
            if started.status_code != 202:
                raise BenchError(f"upload of {blob.digest} refused: {started.status_code}")
            location = requests.compat.urljoin(base, started.headers["Location"])
            separator = "&" if "?" in location else "?"
            target = f"{location}{separator}digest={blob.digest}"
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
            if blob.path is not None:
                with blob.path.open("rb") as body:
                    done = send("PUT", target, data=body, headers=headers, timeout=600)
            else:
                done = send("PUT", target, data=blob.data, headers=headers, timeout=120)
            if done.status_code != 201:
                raise BenchError(f"upload of {blob.digest} failed: {done.status_code} {done.text}")
        manifests = list(image.children)
        manifests.append((image.tag, image.media_type, image.manifest))
        for reference, media_type, body in manifests:
            done = send(
                "PUT",
                f"{base}/v2/{repo}/manifests/{reference}",
                data=body,
                headers={"Content-Type": media_type},
                timeout=60,
            )
            if done.status_code != 201:
                raise BenchError(
                    f"manifest {repo}:{reference} refused: {done.status_code} {done.text}"
                )


# -- process helpers --------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's workers of its master)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return sorted(found)


def proc_status_kib(pid: int, field: str) -> int | None:
    """``VmRSS``/``VmHWM`` of a process in KiB, ``None`` once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: t.Iterable[int]) -> float:
    """CPU time the live threads of the processes have run so far, in nanosecond
    resolution (``/proc/PID/task/TID/schedstat``); threads that ended are not counted."""
    nanoseconds = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as file:
                    nanoseconds += int(file.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return nanoseconds / 1e9


def _cpu_snapshot() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, CPU ticks used by the process itself, start time in ticks since boot).

    Children's ticks (cutime/cstime) are left out: they arrive in one lump when a child
    is reaped, however long ago it ran.
    """
    snapshot = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rpartition(")")[2].split()
        except OSError:
            continue
        # fields[0] is field 3 of stat (state): ppid, utime+stime, starttime
        snapshot[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]))
    return snapshot


def _descendants(snapshot: dict[int, tuple[int, int, int]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in snapshot.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _uptime_ticks() -> int:
    with open("/proc/uptime") as file:
        return int(float(file.read().split()[0]) * _CLOCK_TICKS)


class ForeignCpu:
    """The share of the machine's CPU that processes outside this benchmark used while
    a block ran (another test suite on the same machine skews every number).

    Sampled every ``interval`` seconds in a thread; a process that starts and ends
    between two samples is missed. Kernel threads are left out: loopback traffic is
    partly processed in them.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.share: float | None = None
        self._foreign = 0
        self._seen: dict[int, tuple[int, int]] = {}  # pid -> (start, last ticks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-cpu", daemon=True)

    def _sample(self) -> None:
        snapshot = _cpu_snapshot()
        mine = _descendants(snapshot, os.getpid())
        kernel = _descendants(snapshot, 2) | {2}
        for pid, (_, ticks, start) in snapshot.items():
            if pid in mine or pid in kernel:
                continue
            previous = self._seen.get(pid)
            if previous is not None and previous[0] == start:
                self._foreign += max(0, ticks - previous[1])
            elif start >= self._start_ticks:
                self._foreign += ticks  # born inside the window
            self._seen[pid] = (start, ticks)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ForeignCpu:
        self._start = time.monotonic()
        self._start_ticks = _uptime_ticks()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()
        elapsed = time.monotonic() - self._start
        capacity = elapsed * _CLOCK_TICKS * (os.cpu_count() or 1)
        self.share = min(1.0, self._foreign / capacity) if capacity else 0.0


def wait_quiet(max_wait: float, *, threshold: float = 0.10, window: float = 1.0) -> float | None:
    """Wait (at most ``max_wait`` seconds) for a ``window`` in which other processes use
    less than ``threshold`` of the CPU; returns the last share measured."""
    share = None
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        with ForeignCpu() as monitor:
            time.sleep(min(window, max(deadline - time.monotonic(), 0.05)))
        share = monitor.share
        if share is not None and share < threshold:
            break
    return share


class RssSampler:
    """Samples VmRSS of some processes every ``interval`` seconds in a thread.

    ``growth_mib()`` is the largest rise of one process above its RSS when sampling
    started, taking its VmHWM (peak) into account when that rose meanwhile.
    """

    def __init__(self, pids: t.Sequence[int], interval: float = 0.01) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.before = {pid: proc_status_kib(pid, "VmRSS") or 0 for pid in self.pids}
        self.hwm_before = {pid: proc_status_kib(pid, "VmHWM") or 0 for pid in self.pids}
        self.peak = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for pid in self.pids:
            hwm = proc_status_kib(pid, "VmHWM") or 0
            if hwm > self.hwm_before[pid]:
                self.peak[pid] = max(self.peak[pid], hwm)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self.pids:
                rss = proc_status_kib(pid, "VmRSS")
                if rss is not None and rss > self.peak[pid]:
                    self.peak[pid] = rss

    def growth_mib(self) -> float:
        return max((self.peak[p] - self.before[p]) / 1024 for p in self.pids)

    def peak_mib(self) -> float:
        return max(self.peak[p] for p in self.pids) / 1024


# -- the two caches ---------------------------------------------------------------------


class Cache(t.Protocol):
    """What a scenario needs from a pull-through cache under test."""

    label: str
    skopeo: Skopeo

    @property
    def host(self) -> str: ...

    def reference(self, image: SeededImage) -> str: ...

    def manifest_url(self, image: SeededImage) -> str: ...

    def blob_url(self, image: SeededImage, digest: str) -> str: ...

    def auth_headers(self, image: SeededImage) -> dict[str, str]: ...

    def server_pids(self) -> list[int]: ...

    def blob_file(self, digest: str) -> Path: ...

    def has_blob(self, blob: BlobFile) -> bool: ...

    def has_blobs(self, image: SeededImage) -> bool: ...

    def fresh(self) -> None: ...

    def is_running(self) -> bool: ...

    def stop(self) -> None: ...


class _StoredBlobs:
    """Whether a cache has committed blobs, from the file its store keeps for each."""

    def blob_file(self, digest: str) -> Path:
        raise NotImplementedError

    def has_blob(self, blob: BlobFile) -> bool:
        path = self.blob_file(blob.digest)
        try:
            return path.stat().st_size == blob.size
        except FileNotFoundError:
            return False

    def has_blobs(self, image: SeededImage) -> bool:
        return all(self.has_blob(blob) for blob in image.blobs)


class Distribution(_StoredBlobs):
    """``docker-registry serve`` with ``proxy: {remoteurl: UPSTREAM}``: the reference.

    :meth:`fresh` restarts it on a new, empty storage folder (an empty cache).
    """

    label = "distribution"

    def __init__(
        self,
        processes: ProcessFactory,
        directory: Path,
        remote_url: str,
        name: str = "distribution",
    ) -> None:
        self.processes = processes
        self.directory = directory
        self.remote_url = remote_url
        self.name = name
        self.port = free_port()
        self.process: LiveProcess | None = None
        self.storage_dir: Path | None = None
        self._generation = 0
        directory.mkdir(parents=True, exist_ok=True)
        self.skopeo = Skopeo(directory / "skopeo", timeout=600)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def fresh(self) -> None:
        self.stop()
        if self.storage_dir is not None:
            shutil.rmtree(self.storage_dir, ignore_errors=True)
        self._generation += 1
        self.storage_dir = self.directory / f"storage-{self._generation}"
        self.storage_dir.mkdir()
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
            },
            "http": {"addr": self.host, "secret": "bench-distribution-secret"},
            "proxy": {"remoteurl": self.remote_url},
        }
        config_path = self.directory / f"config-{self._generation}.yml"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        self.process = self.processes.create(self.name, ["docker-registry", "serve", config_path])
        self.process.start(ready=http_probe(f"{self.url}/v2/", status=200), timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def is_running(self) -> bool:
        return self.process is not None and self.process.is_running()

    def reference(self, image: SeededImage) -> str:
        return f"{self.host}/{image.repository}:{image.tag}"

    def manifest_url(self, image: SeededImage) -> str:
        return f"{self.url}/v2/{image.repository}/manifests/{image.tag}"

    def blob_url(self, image: SeededImage, digest: str) -> str:
        return f"{self.url}/v2/{image.repository}/blobs/{digest}"

    def auth_headers(self, image: SeededImage) -> dict[str, str]:
        return {}  # the reference runs without auth: it does less per request than ours

    def server_pids(self) -> list[int]:
        assert self.process is not None and self.process.pid is not None
        return [self.process.pid]

    def blob_file(self, digest: str) -> Path:
        assert self.storage_dir is not None
        hex_ = digest.partition(":")[2]
        return self.storage_dir / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


@dataclasses.dataclass(frozen=True)
class Template:
    """A seeded platform database and the credentials that log in to it."""

    db_path: Path
    #: alice's personal access token (scopes read_registry, write_registry).
    token: str


def seed_template(directory: Path, upstream_url: str) -> Template:
    """A platform database with ``seed.seed_minimal``'s content (alice, developer of
    ``acme``, proxy on) plus a personal access token of alice's, made once in one
    process; every fresh platform copies it."""
    directory.mkdir(parents=True, exist_ok=True)
    db_path = directory / "platform.sqlite3"
    holder = Platform(
        ProcessFactory(directory / "logs"),
        directory,
        database_url=f"sqlite:///{db_path}",
        upstream_url=upstream_url,
        name="template",
    )
    try:
        with holder.batch() as batch:
            seed.seed_minimal(holder)
            holder.setup_command(
                "token",
                "create",
                USER.username,
                "--scopes",
                "read_registry,write_registry",
                "--name",
                "benchmark",
            )
    except CommandFailed as exc:
        raise BenchError(f"seeding the template database failed:\n{exc}") from exc
    # The token is the last line of the output: it is shown once.
    return Template(db_path, batch.output.strip().splitlines()[-1])


def serving_args(serving: str, threads: int) -> list[str]:
    """gunicorn options on top of ``examples/gunicorn.conf.py`` for a serving model."""
    if serving == "gevent":
        return []
    if serving == "gthread":
        return ["--worker-class", "gthread", "--threads", str(threads), "--timeout", "120"]
    raise ValueError(f"unknown serving model {serving!r}")


class Ours(_StoredBlobs):
    """The example platform under gunicorn with the extension: the shipped
    ``examples/gunicorn.conf.py`` (gevent), or ``gthread`` with ``threads`` per worker.

    :meth:`fresh` starts a new platform on a copy of the template database and a new,
    empty blob store (an empty cache), then logs skopeo in: :attr:`skopeo` with
    ``secret`` (the personal access token by default), :attr:`password_skopeo` with the
    password (whose scrypt check every token request then pays), and
    :attr:`identity_skopeo` with the identity token a password login with offline access
    answers, as ``docker login`` stores it (every pull then refreshes with ``POST``, no
    password hash).
    """

    label = "ours"

    def __init__(
        self,
        processes: ProcessFactory,
        directory: Path,
        *,
        template: Template,
        secret: str | None = None,
        upstream_url: str,
        workers: int,
        threads: int,
        serving: str = "gevent",
        extra_env: t.Mapping[str, str] | None = None,
        name: str = "ours",
    ) -> None:
        self.processes = processes
        self.directory = directory
        self.template = template
        self.secret = secret or template.token
        self.upstream_url = upstream_url
        self.workers = workers
        self.threads = threads
        self.serving = serving
        self.extra_env = dict(extra_env or {})
        self.name = name
        self.platform: Platform | None = None
        self._generation = 0
        directory.mkdir(parents=True, exist_ok=True)
        self.skopeo = Skopeo(directory / "skopeo", timeout=600)
        self.password_skopeo = Skopeo(directory / "skopeo-password", timeout=600)
        self.identity_skopeo = Skopeo(directory / "skopeo-identity", timeout=600)
        self.identity_token = ""
        self._tokens: dict[str, tuple[float, str]] = {}

    @property
    def host(self) -> str:
        assert self.platform is not None
        return self.platform.host

    def fresh(self) -> None:
        self.stop()
        if self.platform is not None:
            shutil.rmtree(self.platform.directory, ignore_errors=True)
        self._generation += 1
        directory = self.directory / f"platform-{self._generation}"
        directory.mkdir()
        db_path = directory / "platform.sqlite3"
        shutil.copyfile(self.template.db_path, db_path)
        self.platform = Platform(
            self.processes,
            directory,
            database_url=f"sqlite:///{db_path}",
            upstream_url=self.upstream_url,
            name=self.name,
            extra_env=self.extra_env,
            workers=self.workers,
            gunicorn_args=serving_args(self.serving, self.threads),
        )
        self.platform.start(timeout=60)
        self._tokens.clear()
        for client, secret in ((self.skopeo, self.secret), (self.password_skopeo, USER.password)):
            result = client.login(self.platform.host, USER.username, secret)
            if result.returncode != 0:
                raise BenchError(describe(result))
        self._store_identity_token()

    def _store_identity_token(self) -> None:
        """Log in as ``docker login`` does (``GET /jwt/auth`` with the password and
        ``offline_token=true``) and keep only the refresh token, as containers/image's
        ``identitytoken``: the auth file holds no password."""
        assert self.platform is not None
        answer = requests.get(
            f"{self.platform.url}/jwt/auth",
            params={
                "service": "dependency_proxy",
                "offline_token": "true",
                "client_id": "docker",
                "account": USER.username,
            },
            auth=(USER.username, USER.password),
            timeout=30,
        )
        refresh_token = answer.json().get("refresh_token") if answer.ok else None
        if not refresh_token:
            raise BenchError(
                f"no identity token from /jwt/auth: {answer.status_code} {answer.text}"
            )
        username_only = base64.b64encode(f"{USER.username}:".encode()).decode()
        entry = {"auth": username_only, "identitytoken": refresh_token}
        self.identity_token = refresh_token
        self.identity_skopeo.authfile.write_text(json.dumps({"auths": {self.platform.host: entry}}))

    def stop(self) -> None:
        if self.platform is not None:
            self.platform.stop()

    def is_running(self) -> bool:
        return self.platform is not None and self.platform.process.is_running()

    def _repository(self, image: SeededImage) -> str:
        return f"{GROUP}/{PROXY_SEGMENT}/{image.image}"

    def reference(self, image: SeededImage) -> str:
        return f"{self.host}/{self._repository(image)}:{image.tag}"

    def manifest_url(self, image: SeededImage) -> str:
        assert self.platform is not None
        return f"{self.platform.url}/v2/{self._repository(image)}/manifests/{image.tag}"

    def blob_url(self, image: SeededImage, digest: str) -> str:
        assert self.platform is not None
        return f"{self.platform.url}/v2/{self._repository(image)}/blobs/{digest}"

    def auth_headers(self, image: SeededImage) -> dict[str, str]:
        """A pull token, as a client gets it at ``/jwt/auth`` (reused for 5 minutes)."""
        assert self.platform is not None
        cached = self._tokens.get(image.image)
        if cached is None or cached[0] < time.monotonic():
            header = self.platform.bearer(USER.username, self.secret, GROUP, image.image)
            cached = (time.monotonic() + 300, header["Authorization"])
            self._tokens[image.image] = cached
        return {"Authorization": cached[1]}

    #: The logins :meth:`token_request_ms` measures.
    TOKEN_LOGINS = ("personal access token", "password", "identity token")

    def token_request_ms(self, login: str, image: SeededImage, count: int = 10) -> float:
        """Median milliseconds of ``count`` sequential token requests for ``image`` as a
        client logged in with ``login`` (one of :attr:`TOKEN_LOGINS`) makes them:
        ``GET`` with Basic, or ``POST grant_type=refresh_token`` for the identity token."""
        assert self.platform is not None
        url = f"{self.platform.url}/jwt/auth"
        scope = f"repository:{self._repository(image)}:pull"
        session = requests.Session()
        session.trust_env = False
        timings = []
        for _ in range(count):
            started = time.perf_counter()
            if login == "identity token":
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": self.identity_token,
                    "service": "dependency_proxy",
                    "client_id": "containers/image",
                    "scope": scope,
                }
                answer = session.post(url, data=form, timeout=30)
            else:
                secret = self.secret if login == "personal access token" else USER.password
                params = {"service": "dependency_proxy", "scope": scope}
                answer = session.get(url, params=params, auth=(USER.username, secret), timeout=30)
            timings.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise BenchError(f"token request ({login}): {answer.status_code} {answer.text}")
        session.close()
        return sorted(timings)[len(timings) // 2]

    @property
    def master_pid(self) -> int:
        assert self.platform is not None and self.platform.process.pid is not None
        return self.platform.process.pid

    def server_pids(self) -> list[int]:
        """The gunicorn workers (the master only forks and watches them)."""
        pids = children_of(self.master_pid)
        if not pids:
            raise BenchError("gunicorn has no workers")
        return pids

    def blob_file(self, digest: str) -> Path:
        assert self.platform is not None
        algorithm, _, hex_ = digest.partition(":")
        return self.platform.store_path / "blobs" / algorithm / hex_[:2] / hex_


# -- two hosts ----------------------------------------------------------------------------


def _herd_target(
    manifest_base: str, repository: str, image: SeededImage, headers: dict[str, str]
) -> dict[str, t.Any]:
    """One :mod:`herd` target: the image's manifest by tag and its blobs, at a registry."""
    return {
        "manifest": f"{manifest_base}/v2/{repository}/manifests/{image.tag}",
        "blob_url": f"{manifest_base}/v2/{repository}/blobs/{{digest}}",
        "headers": headers,
    }


def herd_targets(cache: Cache, image: SeededImage) -> list[dict[str, t.Any]]:
    """:mod:`herd` targets of a one-host cache (ours with a pull token)."""
    manifest = cache.manifest_url(image)
    base, _, _ = manifest.partition("/v2/")
    repository = manifest.removeprefix(f"{base}/v2/").rpartition("/manifests/")[0]
    return [_herd_target(base, repository, image, cache.auth_headers(image))]


class FleetOurs:
    """Two hosts of ours that share a PostgreSQL database, a bucket and ``SECRET_KEY``,
    each with ``DEPENDENCY_PROXY_PEER_URL`` (as ``benchmarks/fleet.py``, and the
    README's "Scaling out"). :meth:`fresh` makes a new database and bucket: an empty
    cache on both hosts. Clients log in with alice's personal access token."""

    label = "ours"

    def __init__(
        self,
        processes: ProcessFactory,
        directory: Path,
        *,
        cluster: t.Any,
        seaweedfs: t.Any,
        upstream_url: str,
        workers: int,
        extra_env: t.Mapping[str, str] | None = None,
    ) -> None:
        self.processes = processes
        self.directory = directory
        self.cluster = cluster
        self.seaweedfs = seaweedfs
        self.upstream_url = upstream_url
        self.workers = workers
        self.extra_env = dict(extra_env or {})
        self.hosts: list[Platform] = []
        self.database: str | None = None
        self.bucket = ""
        self.secret = ""
        self._generation = 0

    def fresh(self) -> None:
        self.stop()
        self._generation += 1
        self.database = self.cluster.create_database("herd")
        self.bucket = self.seaweedfs.new_bucket()
        shared = {
            **self.seaweedfs.env(self.bucket),
            "SECRET_KEY": "bench-herd-fleet-secret",
            **self.extra_env,
        }
        self.hosts = [
            Platform(
                self.processes,
                self.directory / f"fleet-{self._generation}-{name}",
                database_url=self.cluster.url(self.database),
                upstream_url=self.upstream_url,
                name=f"ours-fleet-{name}",
                extra_env=shared,
                workers=self.workers,
                peer=True,
            )
            for name in ("a", "b")
        ]
        try:
            with self.hosts[0].batch() as batch:
                seed.seed_minimal(self.hosts[0])
                self.hosts[0].setup_command(
                    "token",
                    "create",
                    USER.username,
                    "--scopes",
                    "read_registry,write_registry",
                    "--name",
                    "herd",
                )
        except CommandFailed as exc:
            raise BenchError(f"seeding the fleet's database failed:\n{exc}") from exc
        self.secret = batch.output.strip().splitlines()[-1]
        for host in self.hosts:
            host.start(timeout=60)

    def herd_targets(self, image: SeededImage) -> list[dict[str, t.Any]]:
        """One target per host, each with a pull token from that host's ``/jwt/auth``."""
        return [
            _herd_target(
                host.url,
                host.repository(GROUP, image.image),
                image,
                host.bearer(USER.username, self.secret, GROUP, image.image),
            )
            for host in self.hosts
        ]

    def has_blobs(self, image: SeededImage) -> bool:
        keys = set(self.seaweedfs.objects(self.bucket, "blobs/"))
        return all(f"blobs/sha256/{b.digest[7:9]}/{b.digest[7:]}" in keys for b in image.blobs)

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()
        self.hosts = []
        if self.database is not None:
            self.cluster.drop_database(self.database)
            self.database = None


class FleetDistribution:
    """Two distribution 2.8 instances in proxy mode on one bucket (``s3-aws``, presigned
    redirects on), as ``benchmarks/fleet.py``: the reference has no sharing between
    instances. :meth:`fresh` starts both on a new bucket."""

    label = "distribution"

    def __init__(
        self, processes: ProcessFactory, directory: Path, *, seaweedfs: t.Any, upstream_url: str
    ) -> None:
        self.processes = processes
        self.directory = directory
        self.seaweedfs = seaweedfs
        self.upstream_url = upstream_url
        self.instances: list[tuple[str, LiveProcess]] = []
        self.bucket = ""
        self._generation = 0
        directory.mkdir(parents=True, exist_ok=True)

    def fresh(self) -> None:
        from tests.support.seaweedfs import distribution_env

        self.stop()
        self._generation += 1
        self.bucket = self.seaweedfs.new_bucket()
        for name in ("a", "b"):
            port = free_port()
            config = {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": self.seaweedfs.distribution_storage(self.bucket),
                "http": {"addr": f"127.0.0.1:{port}", "secret": "bench-herd-fleet"},
                "proxy": {"remoteurl": self.upstream_url},
            }
            path = self.directory / f"distribution-{self._generation}-{name}.yml"
            path.write_text(json.dumps(config))
            process = self.processes.create(
                f"distribution-fleet-{name}",
                ["docker-registry", "serve", str(path)],
                env=distribution_env(),
            )
            self.instances.append((f"http://127.0.0.1:{port}", process))
            process.start(ready=http_probe(f"http://127.0.0.1:{port}/v2/", status=200), timeout=30)

    def herd_targets(self, image: SeededImage) -> list[dict[str, t.Any]]:
        return [_herd_target(url, image.repository, image, {}) for url, _ in self.instances]

    def has_blobs(self, image: SeededImage) -> bool:
        keys = set(self.seaweedfs.objects(self.bucket, "docker/registry/v2/blobs/"))
        prefix = "docker/registry/v2/blobs/sha256"
        return all(f"{prefix}/{b.digest[7:9]}/{b.digest[7:]}/data" in keys for b in image.blobs)

    def stop(self) -> None:
        for _, process in self.instances:
            process.stop()
        self.instances = []


# -- nginx ------------------------------------------------------------------------------


class Nginx:
    """nginx with ``sendfile on`` serving one folder on 127.0.0.1."""

    def __init__(
        self, processes: ProcessFactory, directory: Path, root: Path, *, connections: int = 256
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = directory / "nginx.conf"
        conf.write_text(
            f"{user}worker_processes auto;\n"
            f"pid {directory}/nginx.pid;\n"
            f"error_log {directory}/error.log warn;\n"
            f"events {{ worker_connections {connections}; }}\n"
            "http {\n"
            "  sendfile on; tcp_nopush on; access_log off;\n"
            f"  client_body_temp_path {directory}/body; proxy_temp_path {directory}/proxy;\n"
            f"  fastcgi_temp_path {directory}/fastcgi; uwsgi_temp_path {directory}/uwsgi;\n"
            f"  scgi_temp_path {directory}/scgi;\n"
            "  default_type application/octet-stream;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {root}; }}\n"
            "}\n"
        )
        self.process = processes.create(
            "nginx",
            ["nginx", "-p", str(directory), "-c", str(conf), "-g", "daemon off;"],
            stop_signal=signal.SIGQUIT,
        )

    def start(self) -> Nginx:
        self.process.start(ready=http_probe(f"http://127.0.0.1:{self.port}/"), timeout=20)
        return self

    def url(self, relative: str) -> str:
        return f"http://127.0.0.1:{self.port}/{relative}"


# -- measuring --------------------------------------------------------------------------


def upstream_since(upstream: Registry, mark: int) -> list[AccessRecord]:
    return upstream.access_log(mark)


def wait_cached(cache: Cache, image: SeededImage, timeout: float = 120) -> None:
    """Wait until every blob of ``image`` is committed in the cache's storage (the
    reference stores blobs in the background after it served them)."""
    wait_for(
        lambda: cache.has_blobs(image),
        timeout=timeout,
        interval=0.05,
        what=f"{cache.label} stored {image.repository}",
    )


def settle_upstream(upstream: Registry, quiet: float = 0.3, timeout: float = 30) -> None:
    """Wait until the upstream's access log has not grown for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    size = -1
    while time.monotonic() < deadline:
        current = upstream.process.log_path.stat().st_size
        if current == size:
            return
        size = current
        time.sleep(quiet)


def pull(
    cache: Cache,
    image: SeededImage,
    target: Path,
    *,
    all_platforms: bool = False,
    client: Skopeo | None = None,
) -> float:
    """``skopeo copy`` of ``image`` through ``cache`` into a new folder; wall seconds.

    :param client: a skopeo logged in otherwise than ``cache.skopeo``.
    """
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    destination = f"oci:{target}:pulled" if all_platforms else f"dir:{target}"
    started = time.monotonic()
    result = (client or cache.skopeo).copy(cache.reference(image), destination, all=all_platforms)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(
            f"{cache.label}: pull of {image.repository}:{image.tag} failed: {last}\n"
            f"{describe(result)}"
        )
    shutil.rmtree(target, ignore_errors=True)
    return elapsed


def concurrent_pulls(
    cache: Cache,
    image: SeededImage,
    targets: t.Sequence[Path],
    timeout: float = 600,
    *,
    client: Skopeo | None = None,
) -> float:
    """Start one ``skopeo copy`` per target at once; wall seconds until the last ends.

    :param client: a skopeo logged in otherwise than ``cache.skopeo``.
    """
    skopeo = client or cache.skopeo
    argv_base = [
        "skopeo",
        "--command-timeout",
        f"{int(timeout)}s",
        "copy",
        "--quiet",
        "--retry-times",
        "0",
        "--src-tls-verify=false",
        "--authfile",
        str(skopeo.authfile),
        f"docker://{cache.reference(image)}",
    ]
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
    running: list[subprocess.Popen[bytes]] = []
    logs = [target.with_suffix(".log") for target in targets]
    try:
        started = time.monotonic()
        for target, log in zip(targets, logs, strict=True):
            with log.open("wb") as out:
                running.append(
                    subprocess.Popen(
                        [*argv_base, f"dir:{target}"],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=skopeo.env,
                    )
                )
        deadline = started + timeout + 10
        codes = [p.wait(max(deadline - time.monotonic(), 0.1)) for p in running]
        elapsed = time.monotonic() - started
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    failed = [
        log.read_text(errors="replace") for log, code in zip(logs, codes, strict=True) if code != 0
    ]
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)
    if failed:
        raise BenchError(
            f"{cache.label}: {len(failed)} of {len(targets)} pulls failed:\n{failed[0]}"
        )
    return elapsed


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What one load run measured."""

    tool: str
    requests_per_second: float
    requests: int
    non_2xx: int
    socket_errors: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _latency_ms(text: str, percentile: str) -> float | None:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    return float(match[1]) * _UNITS[match[2]] if match else None


def wrk(
    url: str,
    headers: t.Mapping[str, str],
    *,
    method: str,
    duration: float,
    connections: int = 8,
    threads: int = 2,
) -> LoadResult:
    """``wrk`` with ``connections`` keep-alive connections for ``duration`` seconds
    (rounded to whole seconds, as wrk takes them)."""
    threads = min(threads, connections)
    seconds = max(1, round(duration))
    argv = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    if method != "GET":
        raise ValueError("Debian's wrk 4.1 cannot complete HEAD responses; use loadgen")
    argv.append(url)
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, stdin=subprocess.DEVNULL
    )
    text = result.stdout
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s+(\d+) requests in", text, re.M)
    if result.returncode != 0 or rate is None or total is None:
        raise BenchError(f"wrk failed ({result.returncode}):\n{text}\n{result.stderr}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return LoadResult(
        tool="wrk",
        requests_per_second=float(rate[1]),
        requests=int(total[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(x) for x in errors.groups()) if errors else 0,
        latency_p50_ms=_latency_ms(text, "50"),
        latency_p99_ms=_latency_ms(text, "99"),
    )


def loadgen(
    url: str, headers: t.Mapping[str, str], *, method: str, duration: float, connections: int = 8
) -> LoadResult:
    """:mod:`loadgen` (a bounded asyncio client) in its own process: for HEAD, which
    Debian's wrk cannot measure."""
    argv = [
        sys.executable,
        str(BENCH_DIR / "loadgen.py"),
        "--method",
        method,
        "--connections",
        str(connections),
        "--duration",
        f"{duration:g}",
    ]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    argv.append(url)
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 60, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise BenchError(f"loadgen failed ({result.returncode}): {result.stdout} {result.stderr}")
    data = json.loads(result.stdout)
    return LoadResult(
        tool="loadgen",
        requests_per_second=data["requests_per_second"],
        requests=data["requests"],
        non_2xx=data["non_2xx"],
        socket_errors=data["errors"],
        latency_p50_ms=data["latency_p50_ms"],
        latency_p99_ms=data["latency_p99_ms"],
    )


def load(
    url: str, headers: t.Mapping[str, str], *, method: str, duration: float, connections: int = 8
) -> LoadResult:
    """GET with wrk, HEAD with :func:`loadgen`."""
    if method == "HEAD" or shutil.which("wrk") is None:
        return loadgen(url, headers, method=method, duration=duration, connections=connections)
    return wrk(url, headers, method=method, duration=duration, connections=connections)


def download(url: str, headers: t.Mapping[str, str], *, timeout: float = 300) -> tuple[int, float]:
    """``curl`` a URL into /dev/null: ``(bytes, seconds)``; raises unless it answered 200."""
    argv = [
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "-o",
        "/dev/null",
        "--max-time",
        f"{timeout:g}",
        "-w",
        "%{http_code} %{size_download} %{time_total}",
    ]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    argv.append(url)
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout + 10, stdin=subprocess.DEVNULL
    )
    parts = result.stdout.split()
    if result.returncode != 0 or len(parts) != 3 or parts[0] != "200":
        raise BenchError(f"download of {url} failed: {result.stdout} {result.stderr}")
    return int(parts[1]), float(parts[2])


@dataclasses.dataclass(frozen=True)
class HerdResult:
    """What one herd (:mod:`herd`) measured."""

    clients: int
    failed: int
    #: Seconds from the common start until the last client had every byte (or failed).
    wall: float
    median_done: float | None
    blob_bytes: int
    throughput_mb_s: float
    errors: tuple[str, ...]
    #: (median manifest, median first byte of the largest blob, median, last) seconds
    #: of the clients of each target (each host of a fleet).
    per_target: tuple[tuple[float | None, ...], ...] = ()


def herd(
    targets: t.Sequence[t.Mapping[str, t.Any]],
    *,
    clients: int,
    verify: int = 1,
    timeout: float = 600,
) -> HerdResult:
    """:mod:`herd` (``clients`` asyncio clients that start at one moment) in its own
    process, so the benchmark's own threads take nothing from it."""
    spec = {"targets": list(targets), "clients": clients, "verify": verify, "timeout": timeout}
    result = subprocess.run(
        [sys.executable, str(BENCH_DIR / "herd.py")],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout + 120,
    )
    if result.returncode != 0:
        raise BenchError(f"herd failed ({result.returncode}): {result.stdout} {result.stderr}")
    data = json.loads(result.stdout)
    return HerdResult(
        clients=data["clients"],
        failed=data["failed"],
        wall=data["wall_seconds"],
        median_done=data["median_done_seconds"],
        blob_bytes=data["blob_bytes"],
        throughput_mb_s=data["throughput_mb_s"],
        errors=tuple(data["errors"]),
        per_target=tuple(
            (
                item["median_manifest_seconds"],
                item["median_first_byte_seconds"],
                item["median_done_seconds"],
                item["last_done_seconds"],
            )
            for item in data.get("per_target", ())
        ),
    )


class PySpy:
    """``py-spy record`` of a process (and its subprocesses) while a block runs.

    Writes ``NAME.svg`` (flame graph) and ``NAME.txt`` (collapsed stacks) into
    ``directory``; :func:`summarize_collapsed` turns the latter into a top list.
    """

    def __init__(
        self, pid: int, directory: Path, name: str, *, rate: int = 250, subprocesses: bool = True
    ) -> None:
        self.pid = pid
        self.directory = directory
        self.name = name
        self.rate = rate
        self.subprocesses = subprocesses
        self._processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> PySpy:
        self.directory.mkdir(parents=True, exist_ok=True)
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            argv = [
                "py-spy",
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                fmt,
                "-o",
                str(self.directory / f"{self.name}.{suffix}"),
                "--nonblocking",
            ]
            if self.subprocesses:
                argv.append("--subprocesses")
            if fmt == "raw":
                argv.append("--threads")
            self._processes.append(
                subprocess.Popen(
                    argv,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # let py-spy attach before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self._processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def summarize_collapsed(path: Path, top: int = 15, skip_idle: bool = True) -> str:
    """Top functions by inclusive and by self samples from py-spy's raw output.

    Idle stacks (threads waiting in ``select``/``accept``/condition waits with no
    request on them) are dropped when ``skip_idle`` is set, so the list shows where the
    request-serving CPU time goes.
    """
    idle = re.compile(
        r"(select \(selectors\.py|wait \(threading\.py|_worker \(concurrent/futures"
        r"|accept \(socket\.py|sleep \(gunicorn|run_for_one|_wait_for_tstate_lock"
        r"|wait_for \(threading\.py|run \(gunicorn/workers/gthread\.py:\d+\);\s*$)"
    )
    inclusive: dict[str, int] = {}
    selfs: dict[str, int] = {}
    total = 0
    if not path.exists():
        return "(no profile recorded)"
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if skip_idle and idle.search(frames[-1]):
            continue
        count = int(count_text)
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        selfs[frames[-1]] = selfs.get(frames[-1], 0) + count
    if not total:
        return "(no busy samples)"

    def table(data: dict[str, int]) -> list[str]:
        rows = sorted(data.items(), key=lambda kv: -kv[1])[:top]
        return [f"{100 * n / total:5.1f}%  {frame}" for frame, n in rows]

    project = {
        f: n
        for f, n in inclusive.items()
        if "flask_dependency_proxy/" in f or "examples/platform/" in f
    }
    return "\n".join(
        [
            f"busy samples: {total}",
            "-- self --",
            *table(selfs),
            "-- inclusive --",
            *table(inclusive),
            "-- inclusive, project code only --",
            *table(project),
        ]
    )


def tool_version(argv: t.Sequence[str]) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0] if text else "unknown"
