"""What a host's per-request hook costs registry traffic, and what skipping it with
``is_registry_request()`` saves.

The example platform in process (SQLite in a temporary folder), with one
``after_request`` hook of the kind Pagure has, ``gc.collect()`` after every request. A
client that holds a registry token sends ``GET /v2/<group>/.../manifests/<tag>`` (an
answer from the registry routes, ``404`` here: nothing is cached and no upstream is
reachable, so the time is the extension's and the hook's) ``--requests`` times with the
hook run on every request, then with the hook skipped for registry requests.

    python benchmarks/host_hooks.py [--requests 200] [--heap-objects 0]

``--heap-objects N`` keeps N more small objects alive, as a large host process does:
``gc.collect()`` costs in proportion to the objects it has to visit.
"""

from __future__ import annotations

import argparse
import base64
import gc
import statistics
import tempfile
import time
import typing as t
from pathlib import Path

from flask import Flask, Response

from examples.platform import create_app, services
from flask_dependency_proxy import is_registry_request

USER, PASSWORD, GROUP = "bench", "bench-password-0001", "bench"
IMAGE_PATH = f"/v2/{GROUP}/dependency_proxy/containers/alpine/manifests/latest"


def _app(folder: Path, skip_registry: bool) -> Flask:
    app = create_app(
        {
            "SECRET_KEY": "bench",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder / 'platform.sqlite3'}",
            "DEPENDENCY_PROXY_UPSTREAM_URL": "http://127.0.0.1:9",
            "DEPENDENCY_PROXY_UPSTREAM_RETRIES": 0,
            "DEPENDENCY_PROXY_STORAGE_PATH": str(folder / "store"),
            "DEPENDENCY_PROXY_REQUEST_LOG": "off",
            "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
        }
    )

    @app.after_request
    def _collect(response: Response) -> Response:
        if not (skip_registry and is_registry_request()):
            gc.collect()
        return response

    assert app.test_cli_runner().invoke(args=["init-db"]).exit_code == 0
    with app.app_context():
        if services.find_user(USER) is None:
            services.create_user(USER, PASSWORD)
            services.create_group(GROUP)
            services.add_member(GROUP, USER, "owner")
    return app


def _token(app: Flask) -> str:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    answer = app.test_client().get(
        "/jwt/auth",
        query_string={
            "service": "dependency_proxy",
            "scope": f"repository:{GROUP}/dependency_proxy/containers/alpine:pull",
        },
        headers={"Authorization": f"Basic {basic}"},
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return t.cast(str, answer.get_json()["token"])


def _measure(app: Flask, requests: int) -> list[float]:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {_token(app)}"}
    warm = client.get(IMAGE_PATH, headers=headers)
    assert warm.status_code in (404, 502, 503), warm.get_data(as_text=True)
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(IMAGE_PATH, headers=headers)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code < 500, response.get_data(as_text=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--heap-objects", type=int, default=0)
    options = parser.parse_args()
    kept = [[n] for n in range(options.heap_objects)]  # noqa: F841 - alive on purpose
    with tempfile.TemporaryDirectory() as folder:
        for skip in (False, True):
            times = _measure(_app(Path(folder), skip), options.requests)
            print(
                f"hook {'skipped for registry requests' if skip else 'on every request':32}"
                f" median {statistics.median(times):7.2f} ms"
                f"  p90 {statistics.quantiles(times, n=10)[-1]:7.2f} ms"
                f"  ({options.requests} requests, {len(gc.get_objects())} objects tracked)"
            )


if __name__ == "__main__":
    main()
