"""The least time skopeo needs for the benchmark's warm pull, whatever the server.

A warm pull's wall time is mostly the client's own work: it hashes every byte of the
200 MiB layer and writes it to disk. This measures that work without any registry
(``skopeo copy dir:A dir:B``, the same image as a ``dir:`` layout) and with the
cheapest registry there is, nginx serving the image as static files (``sendfile`` on
and off), so a warm-pull ratio can be read against what no server can go below.

    python benchmarks/client_floor.py [--repetitions 5] [--size-mib 200]

Needs skopeo and nginx (Debian's ``nginx-light``); runs on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

_NGINX = """\
worker_processes 2;
pid {run}/nginx.pid;
error_log {run}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {run}/body; proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fcgi; uwsgi_temp_path {run}/uwsgi; scgi_temp_path {run}/scgi;
  sendfile {sendfile};
  output_buffers 2 1m;
  server {{
    listen 127.0.0.1:{port};
    root {www};
    location = /v2/ {{ default_type application/json; try_files /v2/index.json =404; }}
    location /v2/img/manifests/ {{ default_type application/vnd.oci.image.manifest.v1+json; }}
    location /v2/img/blobs/ {{ default_type application/octet-stream; }}
  }}
}}
"""


def _image(folder: Path, size: int) -> dict[str, str]:
    """A one-layer image as a skopeo ``dir:`` layout; its blobs by digest."""
    folder.mkdir()
    layer = os.urandom(size)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    blobs = {}
    for data in (layer, config):
        hex_digest = hashlib.sha256(data).hexdigest()
        (folder / hex_digest).write_bytes(data)
        blobs[f"sha256:{hex_digest}"] = hex_digest
    layer_digest, config_digest = list(blobs)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(layer),
            }
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "version").write_text("Directory Transport Version: 1.1\n")
    return blobs


def _timed(argv: list[str], target: Path) -> float:
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="client-floor-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx's workers run as another user
        source, target = root / "image", root / "copy"
        blobs = _image(source, args.size_mib * 1024 * 1024)
        www = root / "www" / "v2"
        (www / "img" / "blobs").mkdir(parents=True)
        (www / "img" / "manifests").mkdir()
        (www / "index.json").write_text("{}")
        for digest, name in blobs.items():
            os.link(source / name, www / "img" / "blobs" / digest)
        shutil.copy(source / "manifest.json", www / "img" / "manifests" / "latest")
        results: dict[str, list[float]] = {}
        copy = ["skopeo", "copy", "-q"]
        results["no server: skopeo copy dir: dir:"] = [
            _timed([*copy, f"dir:{source}", f"dir:{target}"], target)
            for _ in range(args.repetitions)
        ]
        for sendfile in ("on", "off"):
            run = root / f"nginx-{sendfile}"
            run.mkdir()
            port = _free_port()
            conf = run / "nginx.conf"
            conf.write_text(_NGINX.format(run=run, port=port, www=root / "www", sendfile=sendfile))
            subprocess.run(["nginx", "-c", str(conf), "-p", f"{run}/"], check=True)
            try:
                time.sleep(0.5)
                pull = [*copy, "--src-tls-verify=false", f"docker://127.0.0.1:{port}/img:latest"]
                results[f"static nginx registry, sendfile {sendfile}"] = [
                    _timed([*pull, f"dir:{target}"], target) for _ in range(args.repetitions)
                ]
            finally:
                subprocess.run(["nginx", "-c", str(conf), "-p", f"{run}/", "-s", "stop"])
    print(f"{args.size_mib} MiB one-layer image, {args.repetitions} repetitions, wall time (s)")
    print("| client of | median | min | max |")
    print("| --- | --- | --- | --- |")
    for name, times in results.items():
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")


if __name__ == "__main__":
    main()
