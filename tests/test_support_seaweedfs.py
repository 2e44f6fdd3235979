"""The suite's object store: as many buckets as a whole session creates, and the
distribution config that keeps blobs in it."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from pathlib import Path

import requests

from tests.support.processes import ProcessFactory, free_port, http_probe
from tests.support.seaweedfs import SeaweedFS, distribution_env


def test_a_session_can_write_into_many_fresh_buckets(seaweedfs: SeaweedFS) -> None:
    buckets = [seaweedfs.new_bucket() for _ in range(24)]
    for bucket in buckets:
        seaweedfs.client.put_object(Bucket=bucket, Key="probe", Body=b"probe")
    assert [seaweedfs.objects(bucket) for bucket in buckets] == [["probe"]] * len(buckets)


def test_distribution_stores_blobs_in_a_bucket_and_redirects_to_them(
    seaweedfs: SeaweedFS, live_process: ProcessFactory, tmp_path: Path
) -> None:
    """The one distribution config for object storage (benchmarks use it) works: a
    pushed blob lands in the bucket, and its GET answers 307 to a presigned URL."""
    bucket = seaweedfs.new_bucket()
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": seaweedfs.distribution_storage(bucket),
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-distribution-s3"},
    }
    path = tmp_path / "distribution.yml"
    path.write_text(json.dumps(config))
    url = f"http://127.0.0.1:{port}"
    live_process(
        "distribution-s3",
        ["docker-registry", "serve", str(path)],
        env=distribution_env(),
        ready=http_probe(f"{url}/v2/", status=200),
        timeout=30,
    )
    data = os.urandom(10_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = requests.post(f"{url}/v2/probe/blobs/uploads/", timeout=30)
    assert started.status_code == 202, started.text
    location = urllib.parse.urljoin(url, started.headers["Location"])
    joiner = "&" if "?" in location else "?"
    pushed = requests.put(f"{location}{joiner}digest={digest}", data=data, timeout=30)
    assert pushed.status_code == 201, pushed.text

    assert f"docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data" in (
        seaweedfs.objects(bucket)
    )
    answer = requests.get(f"{url}/v2/probe/blobs/{digest}", allow_redirects=False, timeout=30)
    assert answer.status_code == 307
    assert answer.headers["Location"].startswith(f"{seaweedfs.endpoint}/{bucket}/")
    assert requests.get(answer.headers["Location"], timeout=30).content == data
